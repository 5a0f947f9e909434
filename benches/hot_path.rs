//! Micro-benchmarks of the data path: decoding PUB and MPUB frames,
//! encoding message frames, the cross-core ring hand-off, and delivery
//! from a topic to a consumer's output buffer, and the AUTH permission
//! check every PUB/MPUB/DPUB/SUB makes when an auth server is configured.
//!
//! `cargo bench --bench hot_path`

use std::cell::{Cell, RefCell};
use std::hint::black_box;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringbuf::traits::{Consumer, Producer, Split};
use ringbuf::HeapRb;
use ringsq::conn::output::{FlushPolicy, OutputBuffer};
use ringsq::protocol::identify::ClientSettings;
use ringsq::protocol::message::{put_message_frame, IdGenerator};
use ringsq::protocol::{decode, ConnState, DecodeContext, Message};
use ringsq::shard::{ClientInfo, Shard, ShardConfig, Subscriber};

fn ctx() -> DecodeContext {
    DecodeContext {
        state: ConnState::Init,
        heartbeats_enabled: true,
        max_msg_size: 1 << 20,
        max_body_size: 5 << 20,
        max_rdy_count: 2500,
        max_req_timeout_ms: 3_600_000,
    }
}

fn pub_frames(n: usize, size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.extend_from_slice(b"PUB bench\n");
        out.extend_from_slice(&(size as i32).to_be_bytes());
        out.extend(std::iter::repeat_n(b'x', size));
    }
    out
}

fn mpub_frame(batch: usize, size: usize) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(batch as i32).to_be_bytes());
    for _ in 0..batch {
        body.extend_from_slice(&(size as i32).to_be_bytes());
        body.extend(std::iter::repeat_n(b'x', size));
    }
    let mut out = b"MPUB bench\n".to_vec();
    out.extend_from_slice(&(body.len() as i32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

fn decode_all(raw: &[u8]) -> usize {
    let mut buf = BytesMut::from(raw);
    let ctx = ctx();
    let mut n = 0;
    while let Ok(Some(cmd)) = decode(&mut buf, &ctx) {
        black_box(&cmd);
        n += 1;
    }
    n
}

fn bench_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    let pubs = pub_frames(1000, 100);
    g.throughput(Throughput::Elements(1000));
    g.bench_function("pub_100B_x1000", |b| b.iter(|| decode_all(&pubs)));
    for size in [100usize, 1024] {
        let mpub = mpub_frame(200, size);
        g.throughput(Throughput::Elements(200));
        g.bench_with_input(BenchmarkId::new("mpub_200", size), &mpub, |b, raw| {
            b.iter(|| decode_all(raw))
        });
    }
    g.finish();
}

fn bench_encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    let mut ids = IdGenerator::new(1);
    for size in [100usize, 1024] {
        let msg = Message::new(ids.next_id(0), 0, Bytes::from(vec![b'x'; size]));
        let mut out = Vec::with_capacity(64 * 1024);
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::new("message_frame", size), &msg, |b, m| {
            b.iter(|| {
                if out.len() > 60 * 1024 {
                    out.clear();
                }
                put_message_frame(&mut out, black_box(m));
            })
        });
    }
    g.bench_function("id_generate", |b| {
        b.iter(|| black_box(ids.next_id(black_box(1))))
    });
    g.finish();
}

fn bench_ring(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring");
    let (mut prod, mut cons) = HeapRb::<u64>::new(4096).split();
    g.throughput(Throughput::Elements(64));
    g.bench_function("push_pop_batch_64", |b| {
        b.iter(|| {
            for i in 0..64u64 {
                let _ = prod.try_push(i);
            }
            let mut sum = 0;
            for v in cons.pop_iter() {
                sum += v;
            }
            black_box(sum)
        })
    });
    g.finish();
}

/// A subscriber as a connection builds it, with its real output buffer.
fn subscriber(id: u64) -> (Rc<Subscriber>, Rc<OutputBuffer>) {
    let settings = ClientSettings {
        client_id: "bench".into(),
        hostname: "bench".into(),
        user_agent: String::new(),
        heartbeat_interval: None,
        output_buffer_size: 16 * 1024,
        output_buffer_timeout: Duration::from_millis(250),
        sample_rate: 0,
        msg_timeout: Duration::from_secs(60),
        tls: None,
    };
    let info = Rc::new(ClientInfo {
        id,
        remote: "127.0.0.1:1".into(),
        connected_at: SystemTime::now(),
        fd: Cell::new(-1),
        settings: RefCell::new(settings),
        state: Cell::new(ConnState::Subscribed),
        pub_counts: RefCell::new(Vec::new()),
        auth: Default::default(),
        deflate: Cell::new(false),
        snappy: Cell::new(false),
    });
    let out = Rc::new(OutputBuffer::new(FlushPolicy {
        buffer_size: 16 * 1024,
        timeout: Duration::from_millis(250),
        heartbeat: None,
    }));
    let sub = Rc::new(Subscriber::new(
        info,
        out.clone(),
        Duration::from_secs(60),
        0,
    ));
    sub.rdy.set(1 << 40);
    (sub, out)
}

/// Publish to a topic with one channel and one ready consumer: stamp,
/// fan-out, dispatch into the consumer's output buffer (the delivery cost
/// a consumer sink adds to).
fn bench_deliver(c: &mut Criterion) {
    let mut g = c.benchmark_group("deliver");
    let config = ShardConfig {
        mem_queue_size: 1 << 20,
        ..ShardConfig::default()
    };
    let mut shard = Shard::new(0, config);
    let (sub, out) = subscriber(1);
    shard.subscribe("t", "c", sub).expect("no consumer limit");
    let bodies: Vec<Bytes> = (0..256).map(|_| Bytes::from(vec![b'x'; 100])).collect();
    let mut spare = Vec::new();
    g.throughput(Throughput::Elements(bodies.len() as u64));
    g.bench_function("publish_dispatch_256x100B", |b| {
        b.iter(|| {
            shard.publish("t", &bodies, None).expect("memory queue");
            if let Some(ch) = shard.channel_mut("t", "c") {
                ch.empty();
            }
            spare.clear();
            let _ = out.take_into(&mut spare);
            black_box(spare.len())
        })
    });
    g.finish();
}

/// T22: the check a publish makes against a cached grant (three
/// authorizations, the permitted one last).
fn bench_auth_check(c: &mut Criterion) {
    let reply = br#"{"ttl":3600,"authorizations":[
        {"topic":"^metrics\\.","channels":["^archive$"],"permissions":["subscribe"]},
        {"topic":"^logs-[a-z]+$","channels":[".*"],"permissions":["subscribe"]},
        {"topic":"^orders-(eu|us)$","channels":[".*"],"permissions":["publish","subscribe"]}]}"#;
    let state = ringsq::protocol::auth::parse(reply).expect("valid reply");
    let mut g = c.benchmark_group("auth_check");
    g.throughput(Throughput::Elements(1));
    g.bench_function("publish_allowed", |b| {
        b.iter(|| black_box(state.is_allowed(black_box("orders-eu"), black_box(""))))
    });
    g.bench_function("publish_refused", |b| {
        b.iter(|| black_box(state.is_allowed(black_box("orders-asia"), black_box(""))))
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_decode,
    bench_encode,
    bench_ring,
    bench_deliver,
    bench_auth_check
);
criterion_main!(benches);
