//! The shared test harness: the emshap-ci binary, and a real Tansu broker on 127.0.0.1 at a
//! free port, stopped when dropped. The broker binary comes from scripts/setup.sh --test
//! (EMSHAP_CI_TANSU); a test that needs it fails, never skips, when it is missing.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_emshap-ci"));
    // Tests see only what they set: no EMSHAP_CI_* from the developer's shell.
    for (k, _) in std::env::vars() {
        if k.starts_with("EMSHAP_CI_") {
            c.env_remove(k);
        }
    }
    c.env("NO_COLOR", "1");
    c
}

/// Runs emshap-ci with `args` in `dir`.
pub fn run(dir: &Path, args: &[&str]) -> Output {
    bin()
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("emshap-ci runs")
}

/// Runs `emshap-ci pull --source file:INPUT --out OUT EXTRA..` in `dir`.
pub fn pull_file(dir: &Path, input: &str, out: &str, extra: &[&str]) -> Output {
    let source = format!("file:{input}");
    let mut args = vec!["pull", "--source", &source, "--out", out];
    args.extend_from_slice(extra);
    run(dir, &args)
}

/// Runs emshap-ci with `args` and one environment variable set.
pub fn run_env(dir: &Path, args: &[&str], key: &str, value: &str) -> Output {
    bin()
        .args(args)
        .env(key, value)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("emshap-ci runs")
}

/// Runs `emshap-ci train MODEL --data data --out OUT --threads 2 -q EXTRA..` in `dir`.
#[cfg_attr(not(feature = "torch"), allow(dead_code))]
pub fn train_model(dir: &Path, model: &str, out: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "train",
        model,
        "--data",
        "data",
        "--out",
        out,
        "--threads",
        "2",
        "-q",
    ];
    args.extend_from_slice(extra);
    run(dir, &args)
}

/// A JSON file, parsed.
#[cfg_attr(not(feature = "torch"), allow(dead_code))]
pub fn json_file(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts the exit code, showing the output when it differs.
#[track_caller]
pub fn assert_exit(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "exit code\nstdout:\n{}\nstderr:\n{}",
        stdout(o),
        stderr(o)
    );
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Tansu broker with in-memory storage, killed on drop.
pub struct Tansu {
    child: Child,
    pub brokers: String,
    _dir: tempfile::TempDir,
}

impl Tansu {
    pub fn start() -> Self {
        let exe = std::env::var("EMSHAP_CI_TANSU").unwrap_or_default();
        assert!(
            !exe.is_empty() && Path::new(&exe).is_file(),
            "the Tansu broker is not installed (EMSHAP_CI_TANSU={exe:?}): run scripts/setup.sh --test and source its env file"
        );
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("tansu.log");
        // A free port can be taken by someone else before the broker binds it: try again.
        for _attempt in 0..3 {
            let port = free_port();
            let url = format!("tcp://127.0.0.1:{port}");
            let mut child = Command::new(&exe)
                .args([
                    "broker",
                    "--listener-url",
                    &url,
                    "--advertised-listener-url",
                    &url,
                ])
                .args([
                    "--storage-engine",
                    "memory://tansu/",
                    "--cluster-id",
                    "emshap-ci-test",
                ])
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&log).unwrap())
                .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
                .spawn()
                .expect("start tansu");
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Tansu {
                        child,
                        brokers: format!("127.0.0.1:{port}"),
                        _dir: dir,
                    };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "tansu did not start; log: {}",
            std::fs::read_to_string(log.with_extension("err")).unwrap_or_default()
        );
    }

    /// Stops the broker now (for "broker went away" tests).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Produces generated telemetry to `topic` (created with 3 partitions).
    pub fn generate(&self, topic: &str, extra: &[&str]) {
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec!["generate", "--brokers", &self.brokers, "--topic", topic];
        args.extend_from_slice(extra);
        let o = run(dir.path(), &args);
        assert_exit(&o, 0);
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The files of a snapshot folder and their bytes, for comparisons.
pub fn read_tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

pub fn dataset(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("dataset.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// One split's Parquet file, read back: string, integer and float columns by name.
pub struct Split {
    pub node_id: Vec<String>,
    pub ints: std::collections::BTreeMap<String, Vec<i64>>,
    pub floats: std::collections::BTreeMap<String, Vec<f32>>,
    pub columns: Vec<String>,
}

pub fn read_split(path: &Path) -> Split {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float32Type, Int32Type, Int64Type};
    use arrow_schema::DataType;
    let file = std::fs::File::open(path).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut s = Split {
        node_id: vec![],
        ints: Default::default(),
        floats: Default::default(),
        columns: vec![],
    };
    for batch in reader {
        let batch = batch.unwrap();
        let schema = batch.schema();
        if s.columns.is_empty() {
            s.columns = schema.fields().iter().map(|f| f.name().clone()).collect();
        }
        for (f, col) in schema.fields().iter().zip(batch.columns()) {
            let name = f.name().clone();
            match f.data_type() {
                DataType::Utf8 => s.node_id.extend(
                    col.as_string::<i32>()
                        .iter()
                        .map(|v| v.unwrap().to_string()),
                ),
                DataType::Int64 => s
                    .ints
                    .entry(name)
                    .or_default()
                    .extend(col.as_primitive::<Int64Type>().values().iter().copied()),
                DataType::Int32 => s.ints.entry(name).or_default().extend(
                    col.as_primitive::<Int32Type>()
                        .values()
                        .iter()
                        .map(|&v| i64::from(v)),
                ),
                DataType::Float32 => s
                    .floats
                    .entry(name)
                    .or_default()
                    .extend(col.as_primitive::<Float32Type>().values().iter().copied()),
                other => panic!("unexpected column type {other}"),
            }
        }
    }
    s
}
