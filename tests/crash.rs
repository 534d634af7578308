//! Crash safety: `kill -9` in the middle of several storescu associations, restart, and check
//! that every instance storescu saw acknowledged with Success is on disk, whole, and indexed.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use sqlx::Row;

fn indexed(url: &str) -> HashMap<String, String> {
    let url = url.to_string();
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async move {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&url).await.unwrap();
        let rows = sqlx::query("SELECT sop_instance_uid, path FROM instances").fetch_all(&pool).await.unwrap();
        pool.close().await;
        rows.iter().map(|r| (r.get::<String, _>(0), r.get::<String, _>(1))).collect()
    })
}

fn kill_during_storescu(backend: Backend) {
    require_tool("storescu");
    let mut node = Node::start(NodeOptions::new(backend));
    let work = tempfile::tempdir().unwrap();
    let study = new_uid();
    // The source data set of every instance, by SOP Instance UID.
    let mut sources: HashMap<String, Vec<u8>> = HashMap::new();
    let mut acknowledged: Vec<PathBuf> = Vec::new();
    for round in 0..3 {
        let batches: Vec<Vec<PathBuf>> = (0..4)
            .map(|i| {
                write_series(&SeriesSpec::new("CT", &study, &new_uid(), 150), &work.path().join(format!("{round}-{i}")))
            })
            .collect();
        for f in batches.iter().flatten() {
            let bytes = std::fs::read(f).unwrap();
            sources.insert(sop_uid(f), data_set_bytes(&bytes).to_vec());
        }
        let senders: Vec<_> = batches
            .iter()
            .map(|files| {
                Command::new("storescu")
                    .args(["-v", "-aet", "STORESCU", "-aec", "PETCT_NODE", "127.0.0.1", &node.port.to_string()])
                    .args(files)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        // Kill at a different point each round, once some instances are in.
        let target = 40 + round * 60;
        while node.stored_files().len() < target {
            std::thread::sleep(Duration::from_millis(2));
        }
        node.kill9();
        let mut round_ok = 0;
        for s in senders {
            let out = s.wait_with_output().unwrap();
            let log = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
            let ok = storescu_successes(&log);
            round_ok += ok.len();
            acknowledged.extend(ok);
        }
        assert!(round_ok < 600, "round {round}: everything was sent before the kill; the test proves nothing");
        node.restart();

        let index = indexed(&node.db.url);
        for f in &acknowledged {
            let sop = sop_uid(f);
            let path = index.get(&sop).unwrap_or_else(|| panic!("round {round}: acknowledged {sop} is not indexed"));
            let stored = std::fs::read(node.storage().join(path)).unwrap_or_else(|e| panic!("acknowledged {sop}: {e}"));
            assert_eq!(data_set_bytes(&stored), sources[&sop].as_slice(), "acknowledged {sop} differs on disk");
        }
        // No partial file is visible: every file in the store is whole. (A file written just
        // before the kill but not yet indexed was never acknowledged; a re-send indexes it.)
        for file in node.stored_files() {
            let sop = file.file_stem().unwrap().to_string_lossy().to_string();
            let stored = std::fs::read(&file).unwrap();
            assert_eq!(data_set_bytes(&stored), sources[&sop].as_slice(), "{} is partial", file.display());
        }
        assert_eq!(std::fs::read_dir(node.storage().join("tmp")).unwrap().count(), 0, "temporaries survived restart");
        eprintln!("round {round}: {round_ok} acknowledged before kill -9, {} stored in all", node.stored_files().len());
    }
    // The restarted node serves again.
    assert_success(&node.echoscu("ECHOSCU"), "echo after restart");
}

#[test]
fn kill_9_loses_no_acknowledged_instance_sqlite() {
    kill_during_storescu(Backend::Sqlite);
}

#[test]
fn kill_9_loses_no_acknowledged_instance_postgres() {
    kill_during_storescu(Backend::Postgres);
}
