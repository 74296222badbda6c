//! The store benchmark (BENCHMARKS.md): `publish` and `fetch` of a ~100 MB version against
//! the local S3-compatible server (moto, started here through tests/servers/s3_server.py as
//! the tests start it), with the share of the time spent hashing (sha256), side by side
//! with the bare object transfer of the same bytes (one put and one get of the big file
//! through the same client, no digests, no manifest) and with the local-directory store.
//!
//! usage: EMSHAP_CI_MOTO_PYTHON=... cargo run --release --example bench_store -- [MB] [REPS]

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Instant;

use emshap_ci::store::local::LocalStore;
use emshap_ci::store::s3::{S3Options, S3Store};
use emshap_ci::store::versions;
use emshap_ci::store::{Cond, Store};
use sha2::{Digest, Sha256};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let mb: usize = args.get(1).map_or(100, |a| a.parse().unwrap());
    let reps: usize = args.get(2).map_or(5, |a| a.parse().unwrap());

    let python = std::env::var("EMSHAP_CI_MOTO_PYTHON").map_err(|_| {
        "set EMSHAP_CI_MOTO_PYTHON (source the env file of scripts/setup.sh --test)"
    })?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/servers/s3_server.py");
    let mut server = Command::new(python)
        .args([script, "--bucket", "bench"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut line = String::new();
    std::io::BufReader::new(server.stdout.take().unwrap()).read_line(&mut line)?;
    let info: serde_json::Value = serde_json::from_str(&line)?;
    let s3 = S3Store::open_with(
        "s3://bench/models",
        S3Options {
            endpoint: Some(format!("http://127.0.0.1:{}", info["port"])),
            region: Some("us-east-1".into()),
            credentials: Some((
                info["writer"]["id"].as_str().unwrap().into(),
                info["writer"]["secret"].as_str().unwrap().into(),
            )),
            ..Default::default()
        },
    )?;
    let tmp = tempfile::tempdir()?;
    let local = LocalStore::new(tmp.path().join("store"));

    // A version as publish sees it: one large model file and the small ones.
    let big: Vec<u8> = (0..mb << 20)
        .map(|i| ((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8)
        .collect();
    let files: Vec<(String, Vec<u8>)> = vec![
        ("power_predictor.onnx".into(), big.clone()),
        ("emshap_model.onnx".into(), vec![7u8; 2 << 20]),
        ("scaler.json".into(), vec![b'1'; 2_000]),
        ("metrics.json".into(), b"{\"verdict\":\"pass\"}".to_vec()),
        ("dataset.json".into(), vec![b'2'; 4_000]),
    ];
    let total: usize = files.iter().map(|(_, b)| b.len()).sum();
    let total_mb = total as f64 / 1e6;

    let mut hash = vec![];
    let (mut s3_pub, mut s3_fetch, mut raw_put, mut raw_get) = (vec![], vec![], vec![], vec![]);
    let (mut loc_pub, mut loc_fetch) = (vec![], vec![]);
    for rep in 0..reps {
        let t = Instant::now();
        for (_, b) in &files {
            std::hint::black_box(Sha256::digest(b));
        }
        hash.push(t.elapsed().as_secs_f64());

        let sha = format!("bench{rep:04}");
        let t = Instant::now();
        assert!(versions::publish(&s3, &sha, &files)?);
        s3_pub.push(t.elapsed().as_secs_f64());
        let dest = tmp.path().join("fetched");
        let t = Instant::now();
        versions::fetch(&s3, Some(&sha), &dest)?;
        s3_fetch.push(t.elapsed().as_secs_f64());

        let t = Instant::now();
        s3.put(&format!("raw/{rep}"), &big, Cond::Always)?;
        raw_put.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let o = s3.get(&format!("raw/{rep}"))?.unwrap();
        raw_get.push(t.elapsed().as_secs_f64());
        assert_eq!(o.bytes.len(), big.len());

        let t = Instant::now();
        versions::publish(&local, &sha, &files)?;
        loc_pub.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        versions::fetch(&local, Some(&sha), &dest)?;
        loc_fetch.push(t.elapsed().as_secs_f64());
    }
    let _ = server.kill();

    let h = median(hash);
    let big_mb = big.len() as f64 / 1e6;
    println!(
        "version of {total_mb:.1} MB ({} files, largest {big_mb:.1} MB), median of {reps} runs\n",
        files.len()
    );
    println!(
        "sha256 of the whole version: {:.3} s = {:.0} MB/s\n",
        h,
        total_mb / h
    );
    println!("| operation | s | MB/s | sha256 share |\n|---|---|---|---|");
    let row = |name: &str, v: Vec<f64>, mb: f64, hashed: bool| {
        let s = median(v);
        let share = if hashed {
            format!("{:.1} %", 100.0 * h / s)
        } else {
            "-".into()
        };
        println!("| {name} | {s:.3} | {:.0} | {share} |", mb / s);
    };
    row(
        "S3 publish (hash, upload, manifest last)",
        s3_pub,
        total_mb,
        true,
    );
    row(
        "S3 fetch (download, verify, place)",
        s3_fetch,
        total_mb,
        true,
    );
    row(
        "S3 bare put of the largest file (reference)",
        raw_put,
        big_mb,
        false,
    );
    row(
        "S3 bare get of the largest file (reference)",
        raw_get,
        big_mb,
        false,
    );
    row("local publish", loc_pub, total_mb, true);
    row("local fetch", loc_fetch, total_mb, true);
    Ok(())
}
