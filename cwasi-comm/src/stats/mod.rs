//! What a function did, for the operator: each guest process keeps its
//! counters (calls per peer and mode, errors by status, bytes each way, a
//! latency histogram; requests served) in a small file under the run
//! directory, `<run dir>/stats/<node>/<container>-<pid>.stats`, written with
//! relaxed atomic adds only, so counting costs a call a few nanoseconds and
//! no system call. The node tool (`cwasi`) maps the files read-only and
//! reads them without asking the functions.

mod layout;
mod recorder;
mod snapshot;

pub use layout::bucket_upper_ns;
pub use recorder::{CallCounter, FunctionStats, Identity, LastCounter, stats_dir};
pub use snapshot::{CallSnapshot, FunctionSnapshot, read_all, read_file};

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use cwasi_abi::Status;

    use super::*;
    use crate::{FunctionConfig, Mode};

    fn config() -> FunctionConfig {
        let annotations = [("cwasi.io/function", "caller"), ("cwasi.io/peers", "*")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let mut config = FunctionConfig::from_annotations(&annotations, "caller", "node-1").unwrap();
        config.namespace = "team-a".into();
        config
    }

    #[test]
    fn what_a_process_records_the_node_tool_reads_and_the_file_goes_with_it() {
        let run = tempfile::tempdir().unwrap();
        let config = config();
        let stats = FunctionStats::create(
            &stats_dir(run.path(), "node-1"),
            &Identity { function: &config, container: "c/../1", concurrency: 2 },
        )
        .unwrap();
        let local = stats.counter("echo", Some(Mode::Local));
        for micros in [3, 5, 5, 900] {
            stats.record_call(local, Status::Ok, 1024, 1024, Duration::from_micros(micros));
        }
        let remote = stats.counter("echo", Some(Mode::Remote));
        stats.record_call(remote, Status::Timeout, 10, 0, Duration::from_secs(3));
        stats.record_call(stats.counter("nobody", None), Status::UnknownPeer, 10, 0, Duration::from_micros(1));
        // The same (peer, mode) counts in the same slot.
        stats.record_call(stats.counter("echo", Some(Mode::Local)), Status::Ok, 0, 0, Duration::from_micros(5));
        stats.request_taken(100);
        stats.request_answered(true, 7);
        stats.request_taken(100);

        let all = read_all(run.path()).unwrap();
        assert_eq!(all.len(), 1);
        let me = &all[0];
        assert_eq!((me.namespace.as_str(), me.function.as_str(), me.node.as_str()), ("team-a", "caller", "node-1"));
        assert_eq!(me.container, "c/../1");
        assert_eq!((me.served, me.served_ok, me.in_flight, me.served_bytes_in), (2, 1, 1, 200));
        assert_eq!(me.concurrency, 2);
        let local = me.calls.iter().find(|c| c.mode == Some("local")).unwrap();
        assert_eq!((local.calls, local.errors, local.bytes_out), (5, 0, 4096));
        assert_eq!(me.calls.len(), 3);
        // p50 lies in the 5 µs bucket, p99 in the 900 µs one.
        let (p50, p99) = (local.quantile_ns(0.5).unwrap(), local.quantile_ns(0.99).unwrap());
        assert!((5_000..8_000).contains(&p50), "{p50}");
        assert!((900_000..1_400_000).contains(&p99), "{p99}");
        let remote = me.calls.iter().find(|c| c.mode == Some("remote")).unwrap();
        assert_eq!(remote.errors_by_status.get("timeout"), Some(&1));
        let refused = me.calls.iter().find(|c| c.peer == "nobody").unwrap();
        assert_eq!((refused.mode, refused.errors), (None, 1));

        // A copy has no live writer holding its lock: it is stale.
        let file = std::fs::read_dir(stats_dir(run.path(), "node-1")).unwrap().next().unwrap().unwrap().path();
        assert!(!file.file_name().unwrap().to_string_lossy().contains('/'));
        let copy = file.with_file_name("stale-1.stats");
        std::fs::copy(&file, &copy).unwrap();
        assert!(read_file(&copy).unwrap().is_none());
        drop(stats);
        assert!(!file.exists());
    }
}
