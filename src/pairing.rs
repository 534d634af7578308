//! Which CT a PET series is processed with. Shared by the database's job queueing and by
//! `inspect`, so both always pair the same way.

/// A series as pairing sees it.
#[derive(Debug, Clone)]
pub struct SeriesState {
    pub uid: String,
    pub modality: String,
    pub frame_of_reference_uid: Option<String>,
    pub number_of_slices: Option<i64>,
    pub acquired_at: Option<i64>,
    pub instance_count: i64,
    pub revision: i64,
    pub complete_revision: Option<i64>,
    pub last_received_at: i64,
}

impl SeriesState {
    pub fn complete(&self) -> bool {
        self.complete_revision == Some(self.revision)
    }
}

/// The CT a PET series is processed with: a complete CT sharing its Frame of Reference (closest
/// in acquisition time among several), else the complete CT closest in time, flagged for
/// registration. Ties go to the larger series, then the smaller UID, so the choice is stable.
pub fn pair_ct<'a>(pet: &SeriesState, series: &'a [SeriesState]) -> Option<(&'a SeriesState, bool)> {
    let cts = series.iter().filter(|s| s.modality == "CT" && s.complete());
    let distance = |ct: &SeriesState| match (pet.acquired_at, ct.acquired_at) {
        (Some(a), Some(b)) => (a - b).abs(),
        _ => i64::MAX,
    };
    let best = |it: &mut dyn Iterator<Item = &'a SeriesState>| {
        it.min_by(|a, b| {
            distance(a).cmp(&distance(b)).then(b.instance_count.cmp(&a.instance_count)).then(a.uid.cmp(&b.uid))
        })
    };
    let same_frame = |ct: &&SeriesState| {
        ct.frame_of_reference_uid.is_some() && ct.frame_of_reference_uid == pet.frame_of_reference_uid
    };
    if let Some(ct) = best(&mut cts.clone().filter(same_frame)) {
        return Some((ct, false));
    }
    best(&mut cts.clone()).map(|ct| (ct, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(uid: &str, modality: &str, frame: Option<&str>, at: Option<i64>, complete: bool) -> SeriesState {
        SeriesState {
            uid: uid.into(),
            modality: modality.into(),
            frame_of_reference_uid: frame.map(Into::into),
            number_of_slices: None,
            acquired_at: at,
            instance_count: 10,
            revision: 3,
            complete_revision: complete.then_some(3),
            last_received_at: 0,
        }
    }

    #[test]
    fn pairing_prefers_frame_of_reference_then_time() {
        let pet = s("9", "PT", Some("1.1"), Some(1000), true);
        let series = vec![
            pet.clone(),
            s("1", "CT", Some("1.2"), Some(1000), true),
            s("2", "CT", Some("1.1"), Some(5000), true),
            s("3", "CT", Some("1.1"), Some(1500), true),
            s("4", "CT", Some("1.1"), Some(1000), false),
        ];
        let (ct, reg) = pair_ct(&pet, &series).unwrap();
        assert_eq!((ct.uid.as_str(), reg), ("3", false));
        let other = s("8", "PT", Some("7.7"), Some(1000), true);
        let (ct, reg) = pair_ct(&other, &series).unwrap();
        assert_eq!((ct.uid.as_str(), reg), ("1", true));
        assert!(pair_ct(&pet, &series[4..]).is_none());
    }
}
