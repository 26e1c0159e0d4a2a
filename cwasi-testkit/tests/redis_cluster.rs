//! The rig's Redis Cluster, driven with redis-cli only: it forms, serves
//! keys on every master, fails over when a master is killed and takes the
//! killed one back as a replica.

use std::process::Command;

use cwasi_testkit::{REDIS_NODE, RedisCluster, TestNetwork};

/// `redis-cli -c` (follows MOVED) against node `node`.
fn cli(cluster: &RedisCluster, node: usize, args: &[&str]) -> String {
    cluster.cli(node, &[&["-c"], args].concat()).unwrap_or_else(|e| panic!("{e:#}"))
}

fn write_keys(cluster: &RedisCluster, prefix: &str) {
    for i in 0..64 {
        let key = format!("{prefix}{i}");
        assert_eq!(cli(cluster, 0, &["SET", &key, &i.to_string()]).trim(), "OK");
    }
}

fn check_keys(cluster: &RedisCluster, via: usize, prefix: &str) {
    for i in 0..64 {
        let key = format!("{prefix}{i}");
        assert_eq!(cli(cluster, via, &["GET", &key]).trim(), i.to_string(), "{key}");
    }
}

fn exercise(mut cluster: RedisCluster) {
    assert!(cluster.url().starts_with("redis+cluster://"), "{}", cluster.url());
    assert_eq!(cluster.url().split(',').count(), 3, "{}", cluster.url());
    let masters = cluster.masters().unwrap();
    assert_eq!(masters.len(), 3, "{masters:?}");
    write_keys(&cluster, "before-");
    // The keys spread over all three masters.
    let mut owners: Vec<usize> = (0..64).map(|i| cluster.master_of_key(&format!("before-{i}")).unwrap()).collect();
    owners.sort_unstable();
    owners.dedup();
    assert_eq!(owners, masters);

    let key = "cwasi:{cwasi-test/echo}:req";
    let victim = cluster.master_of_key(key).unwrap();
    cluster.kill(victim).unwrap();
    let promoted = cluster.wait_for_promotion(victim).unwrap();
    assert_ne!(promoted, victim);
    assert_eq!(cluster.master_of_key(key).unwrap(), promoted);
    let via = (0..cluster.len()).find(|&i| i != victim).unwrap();
    // Written with appendfsync always and replicated before the kill.
    check_keys(&cluster, via, "before-");
    write_keys(&cluster, "during-");

    cluster.restart(victim).unwrap();
    assert!(cluster.is_replica(victim), "the old master did not come back as a replica");
    assert_eq!(cluster.masters().unwrap().len(), 3);
    check_keys(&cluster, victim, "during-");
}

#[test]
fn a_cluster_on_loopback_fails_over_and_takes_the_old_master_back() {
    exercise(RedisCluster::start().unwrap());
}

#[test]
fn a_cluster_in_a_test_network_is_reachable_only_there() {
    let network = TestNetwork::new(&["node-a"]).unwrap();
    let cluster = RedisCluster::start_on(&network).unwrap();
    let seed = cluster.url().trim_start_matches("redis+cluster://").split(',').next().unwrap().to_owned();
    let (host, port) = seed.split_once(':').unwrap();
    assert_eq!(host, network.address(REDIS_NODE));
    // From node A across the bridge: reachable.
    let out = network.command("node-a", "redis-cli").unwrap().args(["-h", host, "-p", port, "PING"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "PONG", "{out:?}");
    // From the host: that address does not exist here.
    let out = Command::new("redis-cli").args(["-h", host, "-p", port, "PING"]).output().unwrap();
    assert_ne!(String::from_utf8_lossy(&out.stdout).trim(), "PONG", "{out:?}");
    exercise(cluster);
}

#[test]
fn a_password_protected_cluster_forms_and_refuses_clients_without_it() {
    let cluster = RedisCluster::start_with_password(None, "cl-pw").unwrap();
    assert!(cluster.url().starts_with("redis+cluster://:cl-pw@"), "{}", cluster.url());
    write_keys(&cluster, "auth-");
    check_keys(&cluster, 1, "auth-");
    let (host, port) = cluster.endpoint(0).split_once(':').map(|(h, p)| (h.to_owned(), p.to_owned())).unwrap();
    let out = Command::new("redis-cli").args(["-h", &host, "-p", &port, "GET", "auth-0"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("NOAUTH"), "{out:?}");
}

#[test]
fn a_slot_moves_to_another_master_with_its_keys() {
    let cluster = RedisCluster::start().unwrap();
    // Keys of one hash tag share a slot.
    for i in 0..20 {
        let key = format!("{{tag}}:{i}");
        assert_eq!(cli(&cluster, 0, &["SET", &key, &i.to_string()]).trim(), "OK");
    }
    let from = cluster.master_of_key("{tag}").unwrap();
    let to = *cluster.masters().unwrap().iter().find(|&&m| m != from).unwrap();
    assert_eq!(cluster.migrate_slot_of("{tag}", to, 3).unwrap(), (from, 20));
    assert_eq!(cluster.master_of_key("{tag}").unwrap(), to);
    let slot = cluster.slot_of("{tag}").unwrap().to_string();
    assert_eq!(cluster.cli(to, &["CLUSTER", "COUNTKEYSINSLOT", &slot]).unwrap().trim(), "20");
    assert_eq!(cluster.cli(from, &["CLUSTER", "COUNTKEYSINSLOT", &slot]).unwrap().trim(), "0");
    for i in 0..20 {
        assert_eq!(cli(&cluster, from, &["GET", &format!("{{tag}}:{i}")]).trim(), i.to_string());
    }
}
