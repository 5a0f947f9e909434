//! nsq-load: load generator for nsqd-compatible brokers.
//!
//! One OS thread per publisher/consumer connection, blocking sockets, pre-encoded commands.
//! See `nsq-load --help`.

mod common;
mod consumer;
mod idle;
mod proto;
mod publisher;
mod tls;

use std::io::IsTerminal;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use common::{new_hist, proc_cpu_secs, proc_io_bytes, proc_status_kb, Shared, Verifier};
use publisher::Mode;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "nsq-load",
    version,
    about = "Load generator for nsqd-compatible brokers (NSQ TCP protocol V2 and HTTP /pub, /mpub)",
    after_help = "Examples:\n  \
      nsq-load --pub-conns 4 --mode mpub --batch 200 --size 100 --duration 10s\n  \
      nsq-load --pub-conns 4 --sub-conns 8 --channels 2 --duration 10s          (pub+sub, exact counts checked)\n  \
      nsq-load --backlog 2000000 --pub-conns 4 --sub-conns 4                    (drain scenario)\n  \
      nsq-load --pub-conns 4 --mode http-pub --http-address 127.0.0.1:4151 --rate 50000\n\
      Message bodies start with the send time (8-byte BE ns, CLOCK_REALTIME), then 4-byte\n\
      publisher id and 4-byte sequence (HTTP modes: the same as ASCII hex after '#'), which the\n\
      consumers use for end-to-end latency and exactly-once checks."
)]
struct Cli {
    /// broker TCP address (NSQ protocol V2)
    #[arg(long, default_value = "127.0.0.1:4150")]
    tcp_address: String,
    /// broker HTTP address (http-pub / http-mpub modes)
    #[arg(long, default_value = "127.0.0.1:4151")]
    http_address: String,

    /// publisher connections (one thread each)
    #[arg(long, default_value_t = 4)]
    pub_conns: usize,
    /// publish command
    #[arg(long, value_enum, default_value = "mpub")]
    mode: Mode,
    /// messages per MPUB / HTTP /mpub command
    #[arg(long, default_value_t = 200)]
    batch: usize,
    /// message body size in bytes (>= 8; >= 16 for exactly-once checks; >= 33 for HTTP modes)
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// number of topics; publisher connections cycle over them command by command
    #[arg(long, default_value_t = 1)]
    topics: usize,
    /// with several topics: publisher connection i of N keeps to topic i*K/N instead of cycling
    #[arg(long)]
    sticky_topics: bool,
    /// topic name (with several topics: NAME_0 .. NAME_{K-1})
    #[arg(long, default_value = "bench")]
    topic: String,
    /// defer for the dpub mode, ms
    #[arg(long, default_value_t = 0)]
    dpub_ms: u64,
    /// commands in flight per publisher connection (1 = wait for each OK)
    #[arg(long, default_value_t = 1)]
    inflight: usize,
    /// a publisher connection fails when no acknowledgement arrives for this long
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    ack_timeout: Duration,
    /// open-loop total publish rate in msg/s (default: closed loop, flat out)
    #[arg(long)]
    rate: Option<f64>,

    /// consumer connections; connection j subscribes to pair j mod (topics*channels)
    #[arg(long, default_value_t = 0)]
    sub_conns: usize,
    /// channels per topic (ch0..); with --sub-conns 0 they are still created (SUB then close)
    /// so that published messages are queued as on a real broker; 0 = create none
    #[arg(long, default_value_t = 1)]
    channels: usize,
    /// RDY count per consumer connection
    #[arg(long, default_value_t = 2500)]
    rdy: u32,

    /// publish for this long (e.g. 10s, 500ms, 2m); default 10s unless --count/--backlog
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// publish exactly this many messages (consumer-only runs: consume this many)
    #[arg(long)]
    count: Option<u64>,
    /// drain scenario: publish N messages with consumers subscribed at RDY 0, then open RDY
    /// and time how long the consumers take to empty the channel(s)
    #[arg(long)]
    backlog: Option<u64>,
    /// after publishing, wait at most this long without progress for consumers to catch up
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    settle_timeout: Duration,
    /// hard cap on the consume / drain phase
    #[arg(long, value_parser = parse_duration, default_value = "300s")]
    max_drain: Duration,
    /// drain scenario: run this shell command (sh -c, output to stderr) after the backlog is
    /// published and before RDY, outside the drain timing; e.g.
    /// 'sync; echo 3 > /proc/sys/vm/drop_caches' for a drain from the device, not the page cache
    #[arg(long)]
    before_drain: Option<String>,

    /// extra idle connections (IDENTIFY only) opened before the load
    #[arg(long, default_value_t = 0)]
    idle_conns: usize,

    /// broker pid: report its CPU seconds / CPU% (/proc/PID/stat) and memory (/proc/PID/status)
    #[arg(long)]
    server_pid: Option<u32>,

    /// IDENTIFY output_buffer_timeout (ms) for consumers (default: server's)
    #[arg(long, allow_hyphen_values = true)]
    output_buffer_timeout: Option<i64>,
    /// IDENTIFY output_buffer_size (bytes) for consumers (default: server's)
    #[arg(long, allow_hyphen_values = true)]
    output_buffer_size: Option<i64>,

    /// IDENTIFY heartbeat_interval (ms) for publishers and consumers (default: server's, 30 s)
    #[arg(long, allow_hyphen_values = true)]
    heartbeat_interval: Option<i64>,

    /// publishers and consumers upgrade to TLS after IDENTIFY (tls_v1), trusting this CA
    /// (PEM); the broker needs --tls-cert/--tls-key
    #[arg(long)]
    tls_ca: Option<String>,

    /// do not check exactly-once delivery
    #[arg(long)]
    no_verify: bool,
    /// machine-readable summary on stdout (the table goes to stderr)
    #[arg(long)]
    json: bool,
    /// no live progress line
    #[arg(long)]
    quiet: bool,
    /// label stored in the JSON summary (e.g. the scenario name)
    #[arg(long)]
    label: Option<String>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = if let Some(v) = s.strip_suffix("ms") {
        (v, 0.001)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('m') {
        (v, 60.0)
    } else if let Some(v) = s.strip_suffix('h') {
        (v, 3600.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num.trim().parse().map_err(|_| format!("bad duration {s:?}"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("bad duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(v * mult))
}

fn fmt_int(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn fmt_ns(ns: u64) -> String {
    let f = ns as f64;
    if f < 1e3 {
        format!("{ns}ns")
    } else if f < 1e6 {
        format!("{:.1}µs", f / 1e3)
    } else if f < 1e9 {
        format!("{:.2}ms", f / 1e6)
    } else {
        format!("{:.2}s", f / 1e9)
    }
}

const MIB: f64 = 1024.0 * 1024.0;

fn lat_json(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return Value::Null;
    }
    json!({
        "count": h.len(),
        "p50_ns": h.value_at_quantile(0.5),
        "p99_ns": h.value_at_quantile(0.99),
        "p999_ns": h.value_at_quantile(0.999),
        "max_ns": h.max(),
        "mean_ns": h.mean().round() as u64,
    })
}

fn lat_line(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "-".into();
    }
    format!(
        "p50 {}  p99 {}  p99.9 {}  max {}",
        fmt_ns(h.value_at_quantile(0.5)),
        fmt_ns(h.value_at_quantile(0.99)),
        fmt_ns(h.value_at_quantile(0.999)),
        fmt_ns(h.max())
    )
}

struct ServerSample {
    cpu: Option<f64>,
    /// (read_bytes, write_bytes) of /proc/PID/io
    io: Option<(u64, u64)>,
    at: Instant,
}

fn sample(pid: Option<u32>) -> ServerSample {
    ServerSample { cpu: pid.and_then(proc_cpu_secs), io: pid.and_then(proc_io_bytes), at: Instant::now() }
}

/// (read bytes, written bytes) to/from the storage layer between two samples.
fn io_between(a: &ServerSample, b: &ServerSample) -> Option<(u64, u64)> {
    let ((r0, w0), (r1, w1)) = (a.io?, b.io?);
    Some((r1.saturating_sub(r0), w1.saturating_sub(w0)))
}

fn cpu_between(a: &ServerSample, b: &ServerSample) -> Option<(f64, f64)> {
    let (x, y) = (a.cpu?, b.cpu?);
    let wall = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
    Some((y - x, (y - x) / wall * 100.0))
}

/// Runs the --before-drain command; its output goes to stderr (stdout may carry the JSON).
fn run_before_drain(cmd: &str, newline: bool) -> Value {
    if newline {
        eprintln!();
    }
    let t = Instant::now();
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::from(std::io::stderr()))
        .status();
    let secs = t.elapsed().as_secs_f64();
    let code = match &status {
        Ok(s) => s.code(),
        Err(e) => {
            eprintln!("warning: --before-drain: cannot run sh: {e}");
            None
        }
    };
    if code != Some(0) {
        eprintln!("warning: --before-drain {cmd:?} exited with {code:?}");
    }
    json!({"cmd": cmd, "seconds": secs, "exit_code": code})
}

fn main() {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("nsq-load: {e}");
            std::process::exit(2);
        }
    }
}

fn run(cli: Cli) -> Result<i32, String> {
    // ---------------- validation
    if cli.size < 8 {
        return Err("--size must be >= 8 (the body carries an 8-byte send timestamp)".into());
    }
    if cli.mode.is_http() && cli.size < common::TXT_HDR {
        return Err(format!("--size must be >= {} in HTTP modes (text header)", common::TXT_HDR));
    }
    if cli.topics == 0 {
        return Err("--topics must be >= 1".into());
    }
    if cli.pub_conns == 0 && cli.sub_conns == 0 && cli.idle_conns == 0 {
        return Err("nothing to do: --pub-conns, --sub-conns and --idle-conns are all 0".into());
    }
    let drain = cli.backlog.is_some();
    if drain && (cli.sub_conns == 0 || cli.pub_conns == 0) {
        return Err("--backlog needs --pub-conns > 0 and --sub-conns > 0".into());
    }
    if cli.sub_conns > 0 && cli.channels == 0 {
        return Err("--sub-conns needs --channels >= 1".into());
    }
    if cli.before_drain.is_some() && !drain {
        return Err("--before-drain needs --backlog".into());
    }
    if cli.rdy == 0 && cli.sub_conns > 0 {
        return Err("--rdy must be >= 1".into());
    }
    let count = if drain { cli.backlog } else { cli.count };
    let duration = match (cli.duration, count) {
        (Some(d), _) => Some(d),
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(10)),
    };
    let verify =
        !cli.no_verify && cli.sub_conns > 0 && cli.pub_conns > 0 && (cli.mode.is_http() || cli.size >= common::BIN_HDR);
    let topics: Vec<String> = if cli.topics == 1 {
        vec![cli.topic.clone()]
    } else {
        (0..cli.topics).map(|i| format!("{}_{i}", cli.topic)).collect()
    };
    let channels: Vec<String> = (0..cli.channels).map(|i| format!("ch{i}")).collect();
    let pairs = topics.len() * channels.len();
    let covered = cli.sub_conns >= pairs;
    if cli.sub_conns > 0 && !covered {
        eprintln!(
            "warning: {} consumer connections for {} topic/channel pairs: some channels have no consumer, \
             the expected consumed count is unknown",
            cli.sub_conns, pairs
        );
    }
    let nofile = common::raise_nofile();
    let need_fds = cli.pub_conns * 2 + cli.sub_conns * 2 + cli.idle_conns + 64;
    if (nofile as usize) < need_fds {
        eprintln!("warning: RLIMIT_NOFILE is {nofile}, about {need_fds} descriptors are needed");
    }
    let progress = !cli.quiet;
    let tty = std::io::stderr().is_terminal();

    let sh = Arc::new(Shared::default());
    // Consumer-only runs drain whatever is there; otherwise older messages count as stale.
    let run_start_ns = if cli.pub_conns == 0 { 0 } else { proto::now_ns() };
    let pid = cli.server_pid;
    if let Some(p) = pid {
        if proc_cpu_secs(p).is_none() {
            return Err(format!("--server-pid {p}: cannot read /proc/{p}/stat"));
        }
    }
    let rss_start = pid.and_then(|p| proc_status_kb(p, "VmRSS"));

    // ---------------- idle connections
    let mut idle_json = Value::Null;
    let mut idle_keeper = None;
    if cli.idle_conns > 0 {
        let before = pid.and_then(|p| proc_status_kb(p, "VmRSS"));
        let t0 = Instant::now();
        let ident = proto::identify_body("idle", &[]);
        let conns = idle::open(&cli.tcp_address, cli.idle_conns, &ident, &sh).map_err(|e| e.to_string())?;
        let open_s = t0.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_millis(1000));
        let after = pid.and_then(|p| proc_status_kb(p, "VmRSS"));
        let per = match (before, after) {
            (Some(b), Some(a)) => Some((a as f64 - b as f64) * 1024.0 / cli.idle_conns as f64),
            _ => None,
        };
        eprintln!(
            "opened {} idle connections in {:.2}s; broker RSS {} -> {} KiB{}",
            cli.idle_conns,
            open_s,
            before.map_or("?".into(), fmt_int),
            after.map_or("?".into(), fmt_int),
            per.map_or(String::new(), |p| format!(" ({p:.0} bytes per connection)"))
        );
        idle_json = json!({
            "conns": cli.idle_conns,
            "open_seconds": open_s,
            "rss_before_kb": before,
            "rss_after_kb": after,
            "rss_bytes_per_conn": per,
        });
        idle_keeper = Some(idle::keep(conns, sh.clone()));
    }

    // ---------------- channel pre-creation for publish-only runs
    if cli.sub_conns == 0 && cli.pub_conns > 0 && !channels.is_empty() {
        let ident = proto::identify_body("setup", &[]);
        for t in &topics {
            for c in &channels {
                let r = (|| {
                    let mut s = proto::tcp_connect(&cli.tcp_address, Duration::from_secs(10))?;
                    let mut rb = proto::RecvBuf::new(4096);
                    proto::handshake(&mut s, &mut rb, &ident, Duration::from_secs(10))?;
                    proto::subscribe(&mut s, &mut rb, t, c, Duration::from_secs(10))?;
                    Ok::<_, std::io::Error>(())
                })();
                r.map_err(|e| format!("creating {t}/{c}: {e}"))?;
            }
        }
    }

    // ---------------- consumers
    let mut sub_ident_extra = Vec::new();
    if let Some(v) = cli.output_buffer_timeout {
        sub_ident_extra.push(("output_buffer_timeout".to_string(), json!(v)));
    }
    if let Some(v) = cli.output_buffer_size {
        sub_ident_extra.push(("output_buffer_size".to_string(), json!(v)));
    }
    if let Some(v) = cli.heartbeat_interval {
        sub_ident_extra.push(("heartbeat_interval".to_string(), json!(v)));
    }
    let sub_tls = match &cli.tls_ca {
        Some(ca) => {
            sub_ident_extra.push(("tls_v1".to_string(), json!(true)));
            Some(tls::client_config(ca)?)
        }
        None => None,
    };
    let verifier = if verify { Some(Arc::new(Verifier::new(channels.len(), cli.pub_conns))) } else { None };
    let mut sub_handles = Vec::with_capacity(cli.sub_conns);
    for j in 0..cli.sub_conns {
        let p = j % pairs;
        let cfg = consumer::SubCfg {
            id: j,
            topic: topics[p / channels.len()].clone(),
            channel: channels[p % channels.len()].clone(),
            chan_idx: p % channels.len(),
            rdy: cli.rdy,
            tcp_addr: cli.tcp_address.clone(),
            identify: proto::identify_body("sub", &sub_ident_extra),
            run_start_ns,
            tls: sub_tls.clone(),
        };
        let (s2, v2) = (sh.clone(), verifier.clone());
        sub_handles.push(
            std::thread::Builder::new()
                .name(format!("sub{j}"))
                .stack_size(256 * 1024)
                .spawn(move || consumer::run(cfg, s2, v2))
                .map_err(|e| format!("spawn: {e}"))?,
        );
    }
    let t_wait = Instant::now();
    while sh.subscribed.load(SeqCst) + sh.sub_failed.load(SeqCst) < cli.sub_conns {
        if t_wait.elapsed() > Duration::from_secs(60) {
            sh.abort.store(true, SeqCst);
            return Err("consumers did not subscribe within 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    if sh.sub_failed.load(SeqCst) > 0 {
        eprintln!("warning: {} consumer connections failed to subscribe", sh.sub_failed.load(SeqCst));
    }
    if !drain {
        sh.go_rdy.store(true, SeqCst);
    }

    // ---------------- publishers
    let mut pub_extra = cli.heartbeat_interval.map(|v| ("heartbeat_interval".to_string(), json!(v))).into_iter().collect::<Vec<_>>();
    let pub_tls = match &cli.tls_ca {
        Some(ca) => {
            pub_extra.push(("tls_v1".to_string(), json!(true)));
            Some(tls::client_config(ca)?)
        }
        None => None,
    };
    let pub_ident = proto::identify_body("pub", &pub_extra);
    let mut pub_handles = Vec::with_capacity(cli.pub_conns);
    for i in 0..cli.pub_conns {
        let quota = count.map(|c| c / cli.pub_conns as u64 + u64::from((i as u64) < c % cli.pub_conns as u64));
        let cfg = publisher::PubCfg {
            id: i as u32,
            mode: cli.mode,
            topics: if cli.sticky_topics { vec![topics[i * topics.len() / cli.pub_conns % topics.len()].clone()] } else { topics.clone() },
            start_topic: i,
            batch: cli.batch,
            size: cli.size,
            inflight: cli.inflight,
            rate: cli.rate.map(|r| r / cli.pub_conns as f64),
            quota,
            dpub_ms: cli.dpub_ms,
            tcp_addr: cli.tcp_address.clone(),
            http_addr: cli.http_address.clone(),
            identify: pub_ident.clone(),
            ack_timeout: cli.ack_timeout,
            tls: pub_tls.clone(),
        };
        let s2 = sh.clone();
        pub_handles.push(
            std::thread::Builder::new()
                .name(format!("pub{i}"))
                .spawn(move || publisher::run(cfg, s2))
                .map_err(|e| format!("spawn: {e}"))?,
        );
    }
    let t_wait = Instant::now();
    while sh.pub_ready.load(SeqCst) + sh.pub_failed.load(SeqCst) < cli.pub_conns {
        if t_wait.elapsed() > Duration::from_secs(60) {
            sh.abort.store(true, SeqCst);
            return Err("publishers did not connect within 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    if cli.pub_conns > 0 && sh.pub_ready.load(SeqCst) == 0 {
        sh.abort.store(true, SeqCst);
        let errs = sh.errors.lock().unwrap().join("; ");
        return Err(format!("no publisher could connect: {errs}"));
    }

    // ---------------- run
    let s_start = sample(pid);
    let t_start = s_start.at;
    let t_start_ns = proto::now_ns();
    sh.go_pub.store(true, SeqCst);
    let deadline = duration.map(|d| t_start + d);

    #[derive(PartialEq, Clone, Copy)]
    enum Phase {
        Load,
        Drain,
        Settle,
    }
    let mut phase = Phase::Load;
    let mut s_pub_end: Option<ServerSample> = None;
    let mut s_drain_start: Option<ServerSample> = None;
    let mut before_drain_json = Value::Null;
    let mut cons_at_pub_end = 0u64;
    let mut t_drain_ns = 0u64;
    let mut stalled = false;
    let mut last_cons = 0u64;
    let mut last_cons_change = Instant::now();
    let mut last_tick = t_start;
    let mut last_tick_cpu = s_start.cpu;
    let (mut tick_pub, mut tick_cons) = (0u64, 0u64);
    let mut next_tick = t_start + Duration::from_secs(1);
    let nchan_cov = if covered { channels.len() as u64 } else { 0 };

    loop {
        std::thread::sleep(Duration::from_millis(20));
        let now = Instant::now();
        let published = sh.published.load(Relaxed);
        let consumed = sh.consumed.load(Relaxed);
        if consumed != last_cons {
            last_cons = consumed;
            last_cons_change = now;
        }
        if progress && now >= next_tick {
            next_tick += Duration::from_secs(1);
            let dt = now.duration_since(last_tick).as_secs_f64();
            let cpu_now = pid.and_then(proc_cpu_secs);
            let cpu = match (last_tick_cpu, cpu_now) {
                (Some(a), Some(b)) => format!(" | broker cpu {:.0}%", (b - a) / dt * 100.0),
                _ => String::new(),
            };
            let ph = match phase {
                Phase::Load if drain => "backlog",
                Phase::Load => "load",
                Phase::Drain => "drain",
                Phase::Settle => "settle",
            };
            let line = format!(
                "[{:6.1}s {ph:>7}] pub {:>9}/s tot {:>11} | sub {:>9}/s tot {:>11} | err {}{cpu}",
                now.duration_since(t_start).as_secs_f64(),
                fmt_int(((published - tick_pub) as f64 / dt) as u64),
                fmt_int(published),
                fmt_int(((consumed - tick_cons) as f64 / dt) as u64),
                fmt_int(consumed),
                sh.error_frames.load(Relaxed) + sh.disconnects.load(Relaxed) + sh.http_errors.load(Relaxed),
            );
            if tty {
                eprint!("\r\x1b[K{line}");
            } else {
                eprintln!("{line}");
            }
            last_tick = now;
            last_tick_cpu = cpu_now;
            tick_pub = published;
            tick_cons = consumed;
        }
        if let Some(d) = deadline {
            if now >= d {
                sh.stop_pub.store(true, SeqCst);
            }
        }
        match phase {
            Phase::Load => {
                if cli.pub_conns > 0 {
                    if pub_handles.iter().all(|h| h.is_finished()) {
                        s_pub_end = Some(sample(pid));
                        cons_at_pub_end = sh.consumed.load(SeqCst);
                        if drain {
                            if let Some(cmd) = &cli.before_drain {
                                before_drain_json = run_before_drain(cmd, progress && tty);
                            }
                            s_drain_start = Some(sample(pid));
                            t_drain_ns = proto::now_ns();
                            sh.go_rdy.store(true, SeqCst);
                            phase = Phase::Drain;
                            last_cons_change = Instant::now();
                        } else if cli.sub_conns > 0 {
                            phase = Phase::Settle;
                            last_cons_change = Instant::now();
                        } else {
                            break;
                        }
                    }
                } else {
                    // consumer-only run
                    let done_count = count.is_some_and(|c| consumed >= c);
                    let done_time = deadline.is_some_and(|d| now >= d);
                    // --count without --duration: also stop when nothing arrives any more
                    let idle = deadline.is_none() && now.duration_since(last_cons_change) > cli.settle_timeout;
                    let cap = now.duration_since(t_start) > cli.max_drain;
                    if done_count || done_time || idle || cap || sh.subscribed.load(Relaxed) == 0 {
                        stalled = idle && count.is_some() && !done_count;
                        break;
                    }
                }
            }
            Phase::Drain | Phase::Settle => {
                let expected = sh.published.load(Relaxed) * nchan_cov;
                if nchan_cov > 0 && consumed >= expected {
                    break;
                }
                if now.duration_since(last_cons_change) > cli.settle_timeout {
                    stalled = nchan_cov > 0;
                    break;
                }
                if let Some(p) = s_drain_start.as_ref().or(s_pub_end.as_ref()) {
                    if now.duration_since(p.at) > cli.max_drain {
                        stalled = true;
                        break;
                    }
                }
            }
        }
        if cli.sub_conns > 0 && pub_handles.is_empty() && sh.subscribed.load(Relaxed) == 0 {
            break;
        }
    }
    let s_end = sample(pid);
    if progress && tty {
        eprintln!();
    }
    sh.stop_pub.store(true, SeqCst);
    sh.stop_sub.store(true, SeqCst);

    // ---------------- collect
    let mut rtt = new_hist();
    let mut acked: Vec<u64> = vec![0; cli.pub_conns];
    let mut pub_end: Option<Instant> = None;
    for h in pub_handles {
        let r = h.join().map_err(|_| "publisher thread panicked".to_string())?;
        rtt.add(&r.rtt).ok();
        acked[r.id as usize] = r.acked;
        if let Some(e) = r.end {
            pub_end = Some(pub_end.map_or(e, |p: Instant| p.max(e)));
        }
        let _ = r.start;
    }
    let mut e2e = new_hist();
    for h in sub_handles {
        let r = h.join().map_err(|_| "consumer thread panicked".to_string())?;
        e2e.add(&r.e2e).ok();
    }
    if let Some(k) = idle_keeper {
        let _ = k.join();
    }

    let published: u64 = acked.iter().sum();
    let pub_bytes = sh.pub_bytes.load(SeqCst);
    let consumed = sh.consumed.load(SeqCst);
    let cons_bytes = sh.cons_bytes.load(SeqCst);
    let pub_secs = pub_end.map_or(0.0, |e| e.duration_since(t_start).as_secs_f64());
    let first_ns = sh.first_consume_ns.load(SeqCst);
    let last_ns = sh.last_consume_ns.load(SeqCst);
    let cons_from_ns = if drain { t_drain_ns } else { t_start_ns };
    let cons_secs = if last_ns > cons_from_ns { (last_ns - cons_from_ns) as f64 / 1e9 } else { 0.0 };
    let expected =
        if cli.sub_conns > 0 && covered && cli.pub_conns > 0 { Some(published * channels.len() as u64) } else { None };
    let mut missing: Option<u64> = None;
    if let Some(v) = &verifier {
        let mut m = 0;
        for c in 0..channels.len() {
            for (p, &a) in acked.iter().enumerate() {
                m += v.missing(c, p, a);
            }
        }
        missing = Some(m);
    }
    let dup = sh.duplicates.load(SeqCst);
    let errors_total = sh.error_frames.load(SeqCst) + sh.disconnects.load(SeqCst) + sh.http_errors.load(SeqCst);
    let pub_rate = if pub_secs > 0.0 { published as f64 / pub_secs } else { 0.0 };
    let cons_rate = if cons_secs > 0.0 { consumed as f64 / cons_secs } else { 0.0 };
    // consumption while the publishers were running (steady state, without the tail)
    let cons_rate_during_pub = match &s_pub_end {
        Some(m) if !drain && cli.pub_conns > 0 => {
            let w = m.at.duration_since(t_start).as_secs_f64();
            if w > 0.0 {
                cons_at_pub_end as f64 / w
            } else {
                0.0
            }
        }
        _ => cons_rate,
    };
    let headline = if drain || cli.pub_conns == 0 { cons_rate } else { pub_rate };

    // server figures
    let active_end = {
        let mut e = pub_end.unwrap_or(t_start);
        if last_ns > t_start_ns {
            let c = t_start + Duration::from_nanos(last_ns - t_start_ns);
            e = e.max(c);
        }
        e.min(s_end.at)
    };
    let server_json = match pid {
        None => Value::Null,
        Some(p) => {
            let cpu_total = match (s_start.cpu, s_end.cpu) {
                (Some(a), Some(b)) => Some(b - a),
                _ => None,
            };
            let mut active = active_end.duration_since(t_start).as_secs_f64();
            if active < 0.05 {
                active = s_end.at.duration_since(t_start).as_secs_f64().max(1e-3);
            }
            let (pub_cpu, drain_cpu) = match &s_pub_end {
                Some(m) => (
                    cpu_between(&s_start, m),
                    if drain { cpu_between(s_drain_start.as_ref().unwrap_or(m), &s_end) } else { None },
                ),
                None => (None, None),
            };
            let io = io_between(&s_start, &s_end);
            json!({
                "pid": p,
                "cpu_seconds": cpu_total,
                "cpu_pct": cpu_total.map(|c| c / active * 100.0),
                "publish_phase_cpu_pct": pub_cpu.map(|x| x.1),
                "drain_phase_cpu_seconds": drain_cpu.map(|x| x.0),
                "drain_phase_cpu_pct": drain_cpu.map(|x| x.1),
                "rss_start_kb": rss_start,
                "rss_end_kb": proc_status_kb(p, "VmRSS"),
                "rss_peak_kb": proc_status_kb(p, "VmHWM"),
                "threads": common::proc_threads(p),
                "disk_read_bytes": io.map(|x| x.0),
                "disk_write_bytes": io.map(|x| x.1),
            })
        }
    };
    let errors_list: Vec<String> = sh.errors.lock().unwrap().clone();
    let ok = errors_total == 0
        && dup == 0
        && missing.unwrap_or(0) == 0
        && !stalled
        && expected.is_none_or(|e| consumed == e);

    let summary = json!({
        "label": cli.label,
        "ok": ok,
        "msgs_per_s": headline,
        "config": {
            "tcp_address": cli.tcp_address, "http_address": cli.http_address,
            "mode": cli.mode, "pub_conns": cli.pub_conns, "batch": cli.batch, "size": cli.size,
            "topics": cli.topics, "channels": cli.channels, "sub_conns": cli.sub_conns, "rdy": cli.rdy,
            "inflight": cli.inflight, "rate": cli.rate, "duration_s": duration.map(|d| d.as_secs_f64()),
            "count": cli.count, "backlog": cli.backlog, "idle_conns": cli.idle_conns, "dpub_ms": cli.dpub_ms,
        },
        "published": {
            "count": published, "bytes": pub_bytes, "seconds": pub_secs,
            "msgs_per_s": pub_rate, "mib_per_s": if pub_secs > 0.0 { pub_bytes as f64 / MIB / pub_secs } else { 0.0 },
            "rtt": lat_json(&rtt),
        },
        "consumed": {
            "count": consumed, "expected": expected, "bytes": cons_bytes, "seconds": cons_secs,
            "msgs_per_s": cons_rate, "mib_per_s": if cons_secs > 0.0 { cons_bytes as f64 / MIB / cons_secs } else { 0.0 },
            "msgs_per_s_during_publish": cons_rate_during_pub,
            "first_after_s": if first_ns > cons_from_ns { Some((first_ns - cons_from_ns) as f64 / 1e9) } else { None },
            "e2e": lat_json(&e2e),
            "verified": verify, "duplicates": dup, "missing": missing,
            "redelivered": sh.redelivered.load(SeqCst), "stale": sh.stale.load(SeqCst),
            "foreign": sh.foreign.load(SeqCst), "stalled": stalled,
        },
        "drain": if drain {
            json!({"backlog": cli.backlog, "seconds": cons_secs, "msgs_per_s": cons_rate, "before_drain": before_drain_json})
        } else {
            Value::Null
        },
        "errors": {
            "total": errors_total,
            "error_frames": sh.error_frames.load(SeqCst), "fin_failed": sh.fin_failed.load(SeqCst),
            "disconnects": sh.disconnects.load(SeqCst), "http_errors": sh.http_errors.load(SeqCst),
            "http_reconnects": sh.http_reconnects.load(SeqCst),
            "messages": errors_list,
        },
        "server": server_json,
        "idle": idle_json,
    });

    // ---------------- human report
    let mut t = String::new();
    let title = cli.label.clone().unwrap_or_else(|| "nsq-load".into());
    t += &format!("== {title}: {} ==\n", if ok { "OK" } else { "PROBLEMS" });
    t += &format!(
        "config     {} x {:?}{} size {} B, topics {}, channels {}, consumers {} (RDY {}), inflight {}{}\n",
        cli.pub_conns,
        cli.mode,
        if cli.mode.is_batch() { format!(" batch {},", cli.batch) } else { ",".into() },
        cli.size,
        cli.topics,
        cli.channels,
        cli.sub_conns,
        cli.rdy,
        cli.inflight,
        cli.rate.map_or(String::new(), |r| format!(", rate {} msg/s", fmt_int(r as u64)))
    );
    if cli.pub_conns > 0 {
        t += &format!(
            "published  {:>13} msgs in {:6.2}s  {:>11} msg/s  {:8.1} MiB/s\n",
            fmt_int(published),
            pub_secs,
            fmt_int(pub_rate as u64),
            if pub_secs > 0.0 { pub_bytes as f64 / MIB / pub_secs } else { 0.0 }
        );
        t += &format!("pub RTT    {}  (n={} commands)\n", lat_line(&rtt), fmt_int(rtt.len()));
    }
    if cli.sub_conns > 0 {
        t += &format!(
            "consumed   {:>13} msgs in {:6.2}s  {:>11} msg/s  {:8.1} MiB/s{}\n",
            fmt_int(consumed),
            cons_secs,
            fmt_int(cons_rate as u64),
            if cons_secs > 0.0 { cons_bytes as f64 / MIB / cons_secs } else { 0.0 },
            if drain {
                "   (drain: from RDY to last message)".to_string()
            } else if cli.pub_conns == 0 {
                String::new()
            } else {
                format!("   ({} msg/s while publishing)", fmt_int(cons_rate_during_pub as u64))
            }
        );
        t += &format!("e2e lat    {}\n", lat_line(&e2e));
        t += &format!(
            "delivery   expected {}  duplicates {}  missing {}  redelivered {}  stale {}  foreign {}{}\n",
            expected.map_or("?".into(), fmt_int),
            fmt_int(dup),
            missing.map_or("-".into(), fmt_int),
            fmt_int(sh.redelivered.load(SeqCst)),
            fmt_int(sh.stale.load(SeqCst)),
            fmt_int(sh.foreign.load(SeqCst)),
            if stalled { "  STALLED (gave up waiting)" } else { "" }
        );
    }
    t += &format!(
        "errors     {} (error frames {}, FIN failed {}, disconnects {}, http errors {})\n",
        errors_total,
        sh.error_frames.load(SeqCst),
        sh.fin_failed.load(SeqCst),
        sh.disconnects.load(SeqCst),
        sh.http_errors.load(SeqCst)
    );
    for e in &errors_list {
        t += &format!("           - {e}\n");
    }
    if let Some(p) = pid {
        let s = &summary["server"];
        t += &format!(
            "broker     pid {p}: cpu {:.2}s = {:.0}% of one core{}; RSS {} -> {} KiB (peak {}), {} threads\n",
            s["cpu_seconds"].as_f64().unwrap_or(f64::NAN),
            s["cpu_pct"].as_f64().unwrap_or(f64::NAN),
            if drain {
                format!(
                    " (publish {:.0}%, drain {:.0}%)",
                    s["publish_phase_cpu_pct"].as_f64().unwrap_or(f64::NAN),
                    s["drain_phase_cpu_pct"].as_f64().unwrap_or(f64::NAN)
                )
            } else {
                String::new()
            },
            s["rss_start_kb"].as_u64().map_or("?".into(), fmt_int),
            s["rss_end_kb"].as_u64().map_or("?".into(), fmt_int),
            s["rss_peak_kb"].as_u64().map_or("?".into(), fmt_int),
            s["threads"].as_u64().map_or("?".into(), |v| v.to_string()),
        );
        if let (Some(r), Some(w)) = (s["disk_read_bytes"].as_u64(), s["disk_write_bytes"].as_u64()) {
            let per = |b: u64| {
                if published > 0 {
                    format!(" ({:.0} B/msg published)", b as f64 / published as f64)
                } else {
                    String::new()
                }
            };
            t += &format!(
                "broker io  read {:.1} MiB, written {:.1} MiB{} (/proc/{p}/io: storage layer, page cache included)\n",
                r as f64 / MIB,
                w as f64 / MIB,
                per(w)
            );
        }
    }
    if let Some(s) = before_drain_json["seconds"].as_f64() {
        t += &format!(
            "pre-drain  {:?} took {:.2}s, exit {}\n",
            before_drain_json["cmd"].as_str().unwrap_or(""),
            s,
            before_drain_json["exit_code"]
        );
    }
    if !idle_json.is_null() {
        t += &format!(
            "idle       {} connections, broker RSS +{} bytes per connection\n",
            fmt_int(cli.idle_conns as u64),
            idle_json["rss_bytes_per_conn"].as_f64().map_or("?".into(), |v| format!("{v:.0}"))
        );
    }
    if cli.json {
        eprint!("{t}");
        println!("{}", serde_json::to_string(&summary).unwrap());
    } else {
        print!("{t}");
    }
    Ok(if ok { 0 } else { 1 })
}
