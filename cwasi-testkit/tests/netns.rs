//! The test network: namespaces joined over a bridge, partitions, cleanup.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use cwasi_testkit::{REDIS_NODE, TestNetwork};

fn netns_list() -> String {
    String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).into_owned()
}

/// A listener in node `to`'s namespace at its address (it stays there: a
/// socket keeps the namespace it was made in).
fn listen(network: &TestNetwork, to: &str) -> (TcpListener, SocketAddr) {
    let address = network.address(to).to_owned();
    let listener = network.netns(to).run_in(move || TcpListener::bind((address.as_str(), 0)).unwrap()).unwrap();
    let address = listener.local_addr().unwrap();
    (listener, address)
}

fn connects(address: SocketAddr) -> bool {
    TcpStream::connect_timeout(&address, Duration::from_millis(1000)).is_ok()
}

/// A TCP connection from node `from` to node `to` gets through.
fn ping(network: &TestNetwork, from: &str, to: &str) -> bool {
    let (_listener, address) = listen(network, to);
    network.netns(from).run_in(move || connects(address)).unwrap()
}

#[test]
fn nodes_reach_each_other_across_the_bridge_and_a_cut_link_partitions_one() {
    let host_links =
        String::from_utf8_lossy(&Command::new("ip").args(["-o", "link"]).output().unwrap().stdout).lines().count();
    let names;
    {
        let network = TestNetwork::new(&["node-a", "node-b"]).unwrap();
        names = network.namespaces();
        assert_eq!(names.len(), 4, "{names:?}");
        let list = netns_list();
        assert!(names.iter().all(|n| list.contains(n.as_str())), "{list}");
        assert_ne!(network.address("node-a"), network.address("node-b"));
        assert!(network.address(REDIS_NODE).starts_with("10."));
        assert!(ping(&network, "node-a", "node-b"));
        assert!(ping(&network, "node-b", REDIS_NODE));
        // The host has no route into the test network.
        let (_listener, address) = listen(&network, "node-a");
        assert!(!connects(address), "the host reaches node A at {address}");

        network.link_down("node-a").unwrap();
        assert!(!ping(&network, "node-a", "node-b"));
        assert!(!ping(&network, "node-b", "node-a"));
        assert!(ping(&network, "node-b", REDIS_NODE));
        network.link_up("node-a").unwrap();
        let recovered = (0..10).any(|_| ping(&network, "node-a", "node-b"));
        assert!(recovered, "node A never came back");
    }
    let list = netns_list();
    assert!(names.iter().all(|n| !list.contains(n.as_str())), "left behind:\n{list}");
    let after =
        String::from_utf8_lossy(&Command::new("ip").args(["-o", "link"]).output().unwrap().stdout).lines().count();
    assert_eq!(host_links, after, "the host's interfaces changed");
}

#[test]
fn a_panicking_test_still_deletes_its_namespaces() {
    let names = std::sync::Mutex::new(Vec::new());
    let result = std::panic::catch_unwind(|| {
        let network = TestNetwork::new(&["node-a"]).unwrap();
        *names.lock().unwrap() = network.namespaces();
        panic!("a test failing half-way");
    });
    assert!(result.is_err());
    let list = netns_list();
    let names = names.into_inner().unwrap();
    assert!(!names.is_empty());
    assert!(names.iter().all(|n| !list.contains(n.as_str())), "left behind:\n{list}");
}
