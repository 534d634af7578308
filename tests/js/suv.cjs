// Usage: node suv.cjs instances.json
// instances.json: array of InstanceMetadata objects (one per PET instance of one series), as
// @cornerstonejs/calculate-suv expects them. Prints a JSON array of the suvbw factors.
'use strict';
const fs = require('fs');
const { calculateSUVScalingFactors } = require('@cornerstonejs/calculate-suv');

const instances = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
// The library warns on stdout/stderr when PatientSize/Sex are missing; keep stdout clean.
console.warn = () => {};
const factors = calculateSUVScalingFactors(instances);
process.stdout.write(JSON.stringify(factors.map((f) => f.suvbw)));
