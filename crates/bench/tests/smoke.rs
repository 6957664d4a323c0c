//! A seconds-long run of the harness against a real node in-process
//! (switchboard_testkit's TestServer) with tiny N, so `switchboard bench`
//! keeps working. No timing assertions: only that each scenario runs, its
//! loss check passes, and its results are written and charted.

use clap::Parser;
use switchboard_bench::{BenchArgs, RunResult};
use switchboard_testkit::server::{SECRET, TestServer};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
}

fn common(s: &TestServer, out: &std::path::Path) -> Vec<String> {
    [
        "--url",
        &s.tcp_url(),
        "--http",
        &s.http.to_string(),
        "--app",
        "demo",
        "--secret",
        SECRET,
        "--api-key",
        "demo-api-key",
        "--server-pid",
        &std::process::id().to_string(),
        "--quiet",
        "--out",
        &out.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

async fn bench(args: &[&str], common: &[String]) -> Vec<RunResult> {
    let argv: Vec<String> = std::iter::once("bench".to_string())
        .chain(args.iter().map(|s| s.to_string()))
        .chain(common.iter().cloned())
        .collect();
    let cli = Cli::try_parse_from(&argv).expect("arguments parse");
    switchboard_bench::run(cli.bench)
        .await
        .expect("scenario runs and its loss check passes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenarios_run_against_a_real_node() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("smoke.json");
    let common = common(&server, &out);

    // Within the test node's default rate limit (50/s, burst 100).
    let r = bench(
        &[
            "c2c",
            "--pairs",
            "2",
            "--rate",
            "20",
            "--duration",
            "1",
            "--drain",
            "5",
        ],
        &common,
    )
    .await;
    assert_eq!(r.len(), 1);
    assert!(r[0].loss.ok && r[0].loss.expected > 0, "{:?}", r[0].loss);
    assert!(r[0].latency_us.is_some());
    // What it cost: the node is this process here, so both CPU figures are
    // positive, and per message they are finite.
    for k in [
        "server_cpu_s",
        "generator_cpu_s",
        "server_cpu_us_per_msg",
        "generator_cpu_us_per_msg",
        "server_rss_end_bytes",
    ] {
        assert!(
            r[0].metrics
                .get(k)
                .is_some_and(|v| v.is_finite() && *v > 0.0),
            "{k}: {:?}",
            r[0].metrics
        );
    }

    let r = bench(
        &[
            "connections",
            "--n",
            "20",
            "--procs",
            "1",
            "--settle",
            "0.2",
        ],
        &common,
    )
    .await;
    assert_eq!(r[0].metrics.get("opened"), Some(&20.0));
    assert!(r[0].metrics.contains_key("rss_per_conn_bytes"));

    let r = bench(
        &[
            "reconnect",
            "--clients",
            "5",
            "--backlog",
            "3",
            "--senders",
            "2",
        ],
        &common,
    )
    .await;
    assert_eq!(r[0].loss.received, 15);

    let r = bench(
        &["fanout", "--users", "5", "--messages", "3", "--drain", "5"],
        &common,
    )
    .await;
    assert_eq!(r[0].loss.received, 15);

    let r = bench(
        &[
            "group",
            "--members",
            "8",
            "--online",
            "5",
            "--messages",
            "3",
            "--rate",
            "50",
            "--drain",
            "5",
            "--login-groups",
            "3",
            "--login-unread",
            "2",
        ],
        &common,
    )
    .await;
    assert_eq!(r[0].loss.received, 15);
    assert!(r[0].loss.ok, "{:?}", r[0].loss);
    assert!(r[0].metrics.contains_key("login_groups_current_ms"));

    // The disk scenario needs no node.
    let d = dir.path().display().to_string();
    let disk_out = out.display().to_string();
    let r = bench(
        &["disk", "--dir", &d, "--count", "5", "--out", &disk_out],
        &[],
    )
    .await;
    assert_eq!(r[0].loss.received, 5);
    assert!(r[0].metrics["fsyncs_per_sec"] > 0.0);

    // The report turns the results into a table and charts.
    let md = dir.path().join("benchmarks.md");
    std::fs::write(
        &md,
        "# Benchmarks\n\n<!-- bench:begin -->\n<!-- bench:end -->\n\nanalysis kept\n",
    )
    .expect("write md");
    let charts = dir.path().join("bench");
    let argv = [
        "bench",
        "report",
        &out.display().to_string(),
        "--md",
        &md.display().to_string(),
        "--charts",
        &charts.display().to_string(),
    ];
    let cli = Cli::try_parse_from(argv).expect("report arguments parse");
    switchboard_bench::run(cli.bench)
        .await
        .expect("report runs");
    let text = std::fs::read_to_string(&md).expect("md written");
    assert!(text.contains("| smoke | c2c | switchboard"), "{text}");
    assert!(
        text.contains("| server CPU | generator CPU | server RSS at end |"),
        "{text}"
    );
    assert!(text.contains(" µs/msg ("), "{text}");
    assert!(text.contains("analysis kept"));
    assert!(charts.join("smoke-latency.png").exists());
    server.stop().await;
}

/// The durable peer: the same c2c pairs against RabbitMQ quorum queues with
/// publisher confirms and manual acks, ~1 s, and its loss check passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_c2c_peer_runs() {
    // Skipped only when no broker listens (CI's .ci/services starts one).
    if std::net::TcpStream::connect_timeout(
        &"127.0.0.1:5672".parse().expect("address"),
        std::time::Duration::from_secs(2),
    )
    .is_err()
    {
        eprintln!("SKIPPED rabbitmq_c2c_peer_runs: nothing listens on 127.0.0.1:5672 (RabbitMQ)");
        return;
    }
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("amqp.json");
    let common = common(&server, &out);
    let r = bench(
        &[
            "c2c",
            "--pairs",
            "2",
            "--rate",
            "20",
            "--window",
            "4",
            "--duration",
            "1.5",
            "--drain",
            "10",
            "--amqp",
            "amqp://guest:guest@127.0.0.1:5672/%2f",
        ],
        &common,
    )
    .await;
    assert_eq!(r.len(), 2, "switchboard and rabbitmq");
    let rabbit = &r[1];
    assert_eq!(rabbit.system, "rabbitmq-quorum");
    assert!(
        rabbit.loss.ok && rabbit.loss.expected > 0,
        "{:?}",
        rabbit.loss
    );
    assert_eq!(rabbit.loss.received, rabbit.loss.expected);
    assert!(rabbit.latency_us.is_some());
    // The broker was found by its listening port and measured.
    assert!(
        rabbit.metrics.contains_key("server_cpu_us_per_msg"),
        "{:?}",
        rabbit.metrics
    );
    assert!(
        rabbit.metrics.contains_key("switchboard_ratio"),
        "{:?}",
        rabbit.metrics
    );
    assert!(
        rabbit.metrics.contains_key("switchboard_cpu_ratio"),
        "{:?}",
        rabbit.metrics
    );
    server.stop().await;
}
