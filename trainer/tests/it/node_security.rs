//! Multi-node jobs that only their members can join (issue 28): the orchestrator and the
//! nodes listen on the host they are given (loopback by default), a group with a shared secret
//! refuses every connection that fails the handshake before reading what it sends, bytes from
//! strangers do not disturb the job, a node that dies ends the others with exit 1, and a secret
//! file others can read, a busy port or port 0 exit 2 naming what is wrong.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common;
use crate::common::jobs::*;
use crate::data_parallel::{
    free_ports, node_configs, node_job, said, train_together, Orchestrator,
};

/// A secret file (mode 600 unless `mode` says otherwise) holding `secret`.
fn secret_file(dir: &Path, name: &str, secret: &str, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// Waits until something accepts connections on 127.0.0.1:`port` (at most 60 s).
fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A websocket on `route` of 127.0.0.1:`port` (the upgrade sent, the answer read), or `None`
/// when nothing accepts the connection.
fn open_websocket(port: u16, route: &str) -> Option<TcpStream> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .ok()?;
    let upgrade = format!(
        "GET {route} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(upgrade.as_bytes()).ok()?;
    let mut response = [0u8; 1024];
    let _ = stream.read(&mut response);
    Some(stream)
}

/// A masked binary websocket frame holding `message` (the mask applied, as clients must).
fn frame(message: &[u8]) -> Vec<u8> {
    let mask = [0x5a, 0xc3, 0x11, 0x7e];
    let mut frame = vec![0x82]; // FIN, binary
    match message.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n => {
            frame.push(0x80 | 126);
            frame.extend((n as u16).to_be_bytes());
        }
    }
    frame.extend(mask);
    frame.extend(message.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Sends each of `messages` on a websocket to `route`; errors are ignored (the other side may
/// refuse early).
fn send_frames(port: u16, route: &str, messages: &[Vec<u8>]) {
    let Some(mut stream) = open_websocket(port, route) else {
        return;
    };
    for message in messages {
        if stream.write_all(&frame(message)).is_err() {
            return;
        }
    }
    let _ = stream.read(&mut [0u8; 1024]);
}

/// What a stranger sends a node: a binary frame of garbage (not a message of the protocol: it
/// begins with a MessagePack string), then a frame header claiming 8 GiB and a few bytes.
fn send_garbage(port: u16, route: &str) {
    let Some(mut stream) = open_websocket(port, route) else {
        return;
    };
    let garbage: Vec<u8> = (0..100u8).map(|i| i.wrapping_mul(37) ^ 0xab).collect();
    let mut bytes = frame(&garbage);
    bytes.extend([0x82, 0x80 | 127]);
    bytes.extend((8u64 << 30).to_be_bytes());
    bytes.extend([9, 9, 9, 9, 1, 2, 3]);
    let _ = stream.write_all(&bytes);
    let _ = stream.read(&mut [0u8; 1024]);
}

/// Sends garbage to both nodes' routes until the returned flag is set.
fn garbage_until_stopped(ports: [u16; 2]) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                for port in ports {
                    for route in ["/sync", "/data"] {
                        send_garbage(port, route);
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    (stop, thread)
}

/// Trains the two nodes of [`node_job`] (each config through `edit`) while garbage goes to
/// both nodes' routes; asserts that both finish (exit 0, no panic) with the same metrics.
fn two_nodes_under_garbage(dir: &Path, ports: [u16; 3], edit: impl Fn(&mut serde_json::Value)) {
    let (stop, garbage) = garbage_until_stopped([ports[1], ports[2]]);
    let outs = train_together(&node_configs(dir, ports, 60, edit));
    stop.store(true, Ordering::SeqCst);
    garbage.join().unwrap();
    for out in &outs {
        assert_eq!(out.status.code(), Some(0), "{}", said(out));
        assert!(!said(out).contains("panicked"), "{}", said(out));
    }
    assert_eq!(
        exact(&metrics(&dir.join("runs-0/nodes"))),
        exact(&metrics(&dir.join("runs-1/nodes"))),
        "the two members trained together"
    );
}

#[test]
fn garbage_at_the_nodes_routes_does_not_disturb_a_job_without_a_secret() {
    // Without a secret the garbage reaches the routes' decoders, which must drop it (they
    // panicked: sync.rs:102, data_service.rs:250).
    let dir = scratch("nodes-garbage");
    let ports = free_ports::<3>();
    let _orchestrator = Orchestrator::start(ports[0]);
    two_nodes_under_garbage(&dir, ports, |_| {});
}

/// Messages the orchestrator's decoder is fed: seeded, of every length to 300 bytes, most
/// beginning with a MessagePack array, map or integer marker so that decoding goes past the
/// first byte.
fn fuzz_messages(seed: u64, count: usize) -> Vec<Vec<u8>> {
    let mut state = seed;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..count)
        .map(|_| {
            let len = (next() % 300) as usize;
            let mut message: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if let Some(first) = message.first_mut() {
                let markers = [0x91, 0x92, 0x93, 0x81, 0x82, 0x00, 0x01, 0xdc, 0xde, 0xc4];
                if next() % 4 != 0 {
                    *first = markers[(next() % markers.len() as u64) as usize];
                }
            }
            message
        })
        .collect()
}

#[test]
fn the_orchestrator_survives_fuzzed_messages_and_then_serves_a_job() {
    let dir = scratch("nodes-fuzz");
    let ports = free_ports::<3>();
    let mut orchestrator = Orchestrator::start(ports[0]);
    wait_listening(ports[0]);
    // 2,000 messages in 500 connections, to both routes (bounded: a few seconds).
    let messages = fuzz_messages(0x5eed_f00d, 2000);
    for (i, batch) in messages.chunks(4).enumerate() {
        let route = if i % 2 == 0 { "/request" } else { "/response" };
        send_frames(ports[0], route, batch);
    }
    assert!(
        orchestrator.0.try_wait().unwrap().is_none(),
        "the orchestrator ended while fuzzed"
    );
    for out in train_together(&node_configs(&dir, ports, 60, |_| {})) {
        assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    }
}

#[test]
fn a_node_without_the_secret_is_refused_and_the_job_is_not_disturbed() {
    let dir = scratch("nodes-secret");
    let [orchestrator_port, port0, port1, stranger0, stranger1] = free_ports::<5>();
    let stranger_ports = [stranger0, stranger1];
    let ports = [orchestrator_port, port0, port1];
    let secret = secret_file(&dir, "secret", "correct horse battery staple 42", 0o600);
    let other = secret_file(&dir, "other", "another secret of enough bytes", 0o600);
    let _orchestrator = Orchestrator::start_with(
        orchestrator_port,
        &["--secret-file", secret.to_str().unwrap()],
    );
    wait_listening(orchestrator_port);

    // Two strangers bring the job's config (as rank 1), first: one with another secret, one
    // with none.
    let strangers: Vec<_> = [Some(&other), None]
        .into_iter()
        .enumerate()
        .map(|(k, secret)| {
            let mut stranger = node_job(&dir, ports, 1, 15);
            stranger["out_dir"] = json!(dir.join(format!("runs-stranger{k}")));
            stranger["nodes"]["address"] = json!(format!("ws://127.0.0.1:{}", stranger_ports[k]));
            if let Some(secret) = secret {
                stranger["nodes"]["secret_file"] = json!(secret);
            }
            let stranger = write_config(&dir, &format!("stranger{k}.json"), &stranger);
            std::thread::spawn(move || train_together(&[stranger]).remove(0))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));

    // Garbage at both nodes' routes all along.
    two_nodes_under_garbage(&dir, ports, |job| {
        job["nodes"]["secret_file"] = json!(secret)
    });
    for (k, stranger) in strangers.into_iter().enumerate() {
        let stranger = stranger.join().unwrap();
        let told = said(&stranger);
        assert_eq!(stranger.status.code(), Some(1), "stranger {k}: {told}");
        assert!(told.contains("handshake"), "stranger {k}: {told}");
        assert!(!told.contains("panicked"), "stranger {k}: {told}");
        let checkpoints = dir.join(format!("runs-stranger{k}/nodes/checkpoints"));
        assert!(!checkpoints.exists(), "stranger {k}: {told}");
    }
}

/// A non-loopback address of this machine, if it has one.
fn lan_address() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("10.255.255.255:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[test]
fn the_orchestrator_listens_on_loopback_unless_told_otherwise() {
    let Some(lan) = lan_address() else {
        println!("skipped: this machine has no address but loopback");
        return;
    };
    let [port] = free_ports::<1>();
    let _orchestrator = Orchestrator::start(port);
    wait_listening(port);
    let from_outside = TcpStream::connect_timeout(&(lan, port).into(), Duration::from_secs(2));
    assert!(
        from_outside.is_err(),
        "the orchestrator answers on {lan}:{port}, not only on loopback"
    );
}

#[test]
fn secret_files_others_can_read_or_too_short_exit_2() {
    let dir = scratch("nodes-bad-secret");
    let ports = free_ports::<3>();
    for (name, secret, mode, needle) in [
        (
            "readable",
            "a secret of enough bytes here",
            0o644,
            "chmod 600",
        ),
        ("short", "short", 0o600, "fewer than the 16"),
    ] {
        let file = secret_file(&dir, name, secret, mode);
        let mut job = node_job(&dir, ports, 0, 5);
        job["nodes"]["secret_file"] = json!(file);
        let config = write_config(&dir, &format!("{name}.json"), &job);
        let out = train(&config, &[], &[]);
        assert_eq!(out.status.code(), Some(2), "{name}: {}", said(&out));
        assert!(said(&out).contains("nodes.secret_file"), "{}", said(&out));
        assert!(said(&out).contains(needle), "{}", said(&out));
        let orchestrator = fp8_trainer(&[
            "orchestrator",
            "--port",
            &ports[0].to_string(),
            "--secret-file",
            file.to_str().unwrap(),
        ]);
        assert_eq!(
            orchestrator.status.code(),
            Some(2),
            "{}",
            said(&orchestrator)
        );
        assert!(
            said(&orchestrator).contains(needle),
            "{}",
            said(&orchestrator)
        );
    }
}

#[test]
fn busy_ports_and_port_0_exit_2_naming_the_port() {
    let dir = scratch("nodes-busy");
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let out = fp8_trainer(&["orchestrator", "--port", &port.to_string()]);
    assert_eq!(out.status.code(), Some(2), "{}", said(&out));
    assert!(
        said(&out).contains(&format!("127.0.0.1:{port}")),
        "{}",
        said(&out)
    );
    assert!(!said(&out).contains("listening"), "{}", said(&out));
    let out = fp8_trainer(&["orchestrator", "--port", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", said(&out));
    assert!(said(&out).contains("--port"), "{}", said(&out));

    // A node whose own port is taken: said, not "a node has not joined" after the timeout.
    let [orchestrator_port, other] = free_ports::<2>();
    let _orchestrator = Orchestrator::start(orchestrator_port);
    let config = write_config(
        &dir,
        "node.json",
        &node_job(&dir, [orchestrator_port, port, other], 0, 30),
    );
    let started = Instant::now();
    let out = train(&config, &[], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", said(&out));
    assert!(said(&out).contains("nodes.address"), "{}", said(&out));
    assert!(
        said(&out).contains(&format!("127.0.0.1:{port}")),
        "{}",
        said(&out)
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "before the timeout"
    );
    drop(busy);
}

#[test]
fn a_node_killed_mid_job_ends_the_other_with_exit_1() {
    let dir = scratch("nodes-killed");
    let ports = free_ports::<3>();
    let _orchestrator = Orchestrator::start(ports[0]);
    let configs = node_configs(&dir, ports, 20, |job| {
        job["steps"] = json!(100_000);
        job["eval_every"] = json!(0);
        job["checkpoint_every"] = json!(5);
    });
    let spawn = |config: &PathBuf| {
        std::process::Command::new(common::trainer_bin())
            .args(["train", "--config"])
            .arg(config)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut node0 = crate::common::process::Job(spawn(&configs[0]));
    let mut node1 = crate::common::process::Job(spawn(&configs[1]));
    crate::common::process::wait_for_log_line(&dir.join("runs-0/nodes"), "step 6/");
    node1.kill().unwrap();
    let _ = node1.wait();
    let killed = Instant::now();
    let waited = crate::common::process::wait_at_most(&mut node0.0, Duration::from_secs(120));
    let err = crate::common::process::child_stderr(&mut node0.0);
    let (status, _) = waited.unwrap_or_else(|| panic!("node 0 did not stop: {err}"));
    println!(
        "node 0 stopped {:?} after node 1 was killed",
        killed.elapsed()
    );
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        killed.elapsed() < Duration::from_secs(20 + 30),
        "within nodes.timeout_s"
    );
    // Its checkpoints are complete ones.
    let checkpoints = dir.join("runs-0/nodes/checkpoints");
    for entry in std::fs::read_dir(&checkpoints).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("step-"), "left behind: {name}");
        assert!(path.join("trainer_state/state.json").is_file(), "{name}");
    }
}

#[test]
fn two_nodes_given_one_rank_exit_2_naming_it() {
    let dir = scratch("nodes-same-rank");
    let ports = free_ports::<3>();
    let _orchestrator = Orchestrator::start(ports[0]);
    let first = node_job(&dir, ports, 0, 60);
    let mut second = node_job(&dir, ports, 0, 60);
    second["out_dir"] = json!(dir.join("runs-second"));
    second["nodes"]["address"] = json!(format!("ws://127.0.0.1:{}", ports[2]));
    let configs = [
        write_config(&dir, "first.json", &first),
        write_config(&dir, "second.json", &second),
    ];
    for out in train_together(&configs) {
        assert_eq!(out.status.code(), Some(2), "{}", said(&out));
        assert!(
            said(&out).contains("nodes.rank: rank 0 is given to 2 nodes"),
            "{}",
            said(&out)
        );
        assert!(!said(&out).contains("panicked"), "{}", said(&out));
    }
}

/// Starts `train --config` in the background (killed when dropped).
fn spawn_node(config: &Path) -> crate::common::process::Job {
    crate::common::process::Job(
        std::process::Command::new(common::trainer_bin())
            .args(["train", "--config"])
            .arg(config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

#[test]
fn an_orchestrator_serves_one_job_at_a_time_and_the_next_after_a_crash() {
    let dir = scratch("nodes-one-job");
    let [orchestrator_port, a0, a1, b0, b1, c0, c1] = free_ports::<7>();
    let _orchestrator = Orchestrator::start(orchestrator_port);
    // Job A runs (long), on its two nodes.
    let long = |rank: usize, ports: [u16; 3], name: &str| {
        let mut job = node_job(&dir, ports, rank, 60);
        job["name"] = json!(name);
        job["steps"] = json!(100_000);
        job["eval_every"] = json!(0);
        job["checkpoint_every"] = json!(0);
        write_config(&dir, &format!("{name}{rank}.json"), &job)
    };
    let a = [orchestrator_port, a0, a1];
    let mut nodes_a = [spawn_node(&long(0, a, "a")), spawn_node(&long(1, a, "a"))];
    crate::common::process::wait_for_log_line(&dir.join("runs-0/a"), "step 2/");

    // A node of job B is refused at once, saying why.
    let mut b = node_job(&dir, [orchestrator_port, b0, b1], 0, 60);
    b["name"] = json!("b");
    let out = train(&write_config(&dir, "b0.json", &b), &[], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", said(&out));
    assert!(said(&out).contains("serving another job"), "{}", said(&out));

    // Job A's nodes die; job C then runs on the same orchestrator.
    for node in &mut nodes_a {
        node.kill().unwrap();
        let _ = node.wait();
    }
    let c = [orchestrator_port, c0, c1];
    for out in train_together(&node_configs(&dir, c, 60, |job| job["name"] = json!("c"))) {
        assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    }
}

#[test]
fn a_signal_while_waiting_for_the_other_nodes_stops_at_once() {
    // Joining waits up to nodes.timeout_s (here 300 s) for the other nodes; a SIGTERM from a
    // job scheduler must not wait that long.
    let dir = scratch("nodes-signal-joining");
    let ports = free_ports::<3>();
    let _orchestrator = Orchestrator::start(ports[0]);
    let config = write_config(&dir, "node0.json", &node_job(&dir, ports, 0, 300));
    let mut node = spawn_node(&config);
    crate::common::process::wait_for_log_line(&dir.join("runs-0/nodes"), "starting nodes");
    std::thread::sleep(Duration::from_millis(500));
    crate::common::process::signal(&node, libc::SIGTERM);
    let waited = crate::common::process::wait_at_most(&mut node.0, Duration::from_secs(30));
    let err = crate::common::process::child_stderr(&mut node.0);
    let (status, took) = waited.unwrap_or_else(|| panic!("SIGTERM ignored while joining: {err}"));
    println!("stopped {took:?} after SIGTERM");
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("the other nodes joining"), "{err}");
}
