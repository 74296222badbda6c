//! The benchmark's reference: the least a Rust program must do to read a topic with the
//! `rdkafka` crate: a `BaseConsumer`, `assign` of every partition from the beginning,
//! `fetch.wait.max.ms=5`, `fetch.queue.backoff.ms=0`, counting messages until every
//! partition reports its end. No decoding, no copies.
//!
//! usage: cargo run --release --example raw_consume -- BROKERS TOPIC

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (brokers, topic) = (&args[1], &args[2]);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "raw-bench")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "5")
        .set("fetch.queue.backoff.ms", "0")
        .create()
        .expect("consumer");
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let parts: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
    let mut tpl = TopicPartitionList::new();
    for &p in &parts {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    let started = Instant::now();
    consumer.assign(&tpl).expect("assign");
    let (mut n, mut bytes, mut eof) = (0u64, 0u64, 0usize);
    while eof < parts.len() {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                n += 1;
                bytes += m.payload_len() as u64;
            }
            Some(Err(KafkaError::PartitionEOF(_))) => eof += 1,
            Some(Err(e)) => panic!("{e}"),
            None => {}
        }
    }
    let s = started.elapsed().as_secs_f64();
    println!(
        "{{\"messages\": {n}, \"bytes\": {bytes}, \"seconds\": {s:.3}, \"messages_per_s\": {:.0}}}",
        n as f64 / s
    );
}
