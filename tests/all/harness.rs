//! The shared test harness: the emshap-ci binary, a real Tansu broker and a real S3-compatible
//! server (moto, through tests/servers/s3_server.py) on 127.0.0.1 at free ports, stopped when
//! dropped, a stand-in for the GitHub REST API (`Stand`, a real HTTP server that serves
//! scripted replies and records every request), and a TCP proxy that can cut a connection
//! the way a dying server does. The servers come from scripts/setup.sh --test (EMSHAP_CI_TANSU, EMSHAP_CI_MOTO_PYTHON); a test
//! that needs one fails, never skips, when it is missing.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The tests' stand-in for emshap-ci-train (src/fake_train.rs): small valid graphs in well
/// under a second, through the trainer's real protocol. Built with the `fake-trainer`
/// feature; `bin()` points emshap-ci at it. Tests of training itself use `real::*`.
pub const FAKE_TRAINER: Option<&str> = option_env!("CARGO_BIN_EXE_emshap-ci-fake-train");

/// emshap-ci, with training done by the fake trainer.
pub fn bin() -> Command {
    let mut c = plain_bin();
    if let Some(fake) = FAKE_TRAINER {
        c.env("EMSHAP_CI_TRAIN_BIN", fake);
    }
    c
}

/// emshap-ci with nothing set up for training: it finds emshap-ci-train beside itself.
pub fn plain_bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_emshap-ci"));
    // Tests see only what they set: no EMSHAP_CI_* or AWS_* from the developer's shell, and
    // no AWS profile files or instance metadata behind the SDK's credential chain.
    for (k, _) in std::env::vars() {
        if k.starts_with("EMSHAP_CI_") || k.starts_with("AWS_") {
            c.env_remove(k);
        }
    }
    c.env("NO_COLOR", "1")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    c
}

/// Runs `command` with `args` in `dir`, stdin closed.
pub fn output(mut command: Command, dir: &Path, args: &[&str]) -> Output {
    command
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("emshap-ci runs")
}

/// `train MODEL --data data --out OUT --threads 2 -q EXTRA..`.
fn train_args<'a>(model: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
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
    args
}

/// The same helpers with real training: emshap-ci starts the emshap-ci-train built beside
/// it (`cargo nextest run --workspace --all-features` builds it).
#[cfg(feature = "real-training")]
pub mod real {
    use std::path::Path;
    use std::process::{Command, Output};

    pub use super::*;

    pub fn bin() -> Command {
        super::plain_bin()
    }

    pub fn run(dir: &Path, args: &[&str]) -> Output {
        output(bin(), dir, args)
    }

    pub fn run_env(dir: &Path, args: &[&str], key: &str, value: &str) -> Output {
        let mut c = bin();
        c.env(key, value);
        output(c, dir, args)
    }

    pub fn train_model(dir: &Path, model: &str, out: &str, extra: &[&str]) -> Output {
        run(dir, &super::train_args(model, out, extra))
    }
}

/// Runs emshap-ci with `args` in `dir`.
pub fn run(dir: &Path, args: &[&str]) -> Output {
    output(bin(), dir, args)
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
    let mut c = bin();
    c.env(key, value);
    output(c, dir, args)
}

/// Runs `emshap-ci train MODEL --data data --out OUT --threads 2 -q EXTRA..` in `dir`.
pub fn train_model(dir: &Path, model: &str, out: &str, extra: &[&str]) -> Output {
    run(dir, &train_args(model, out, extra))
}

/// A JSON file, parsed.
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

/// An access key id and its secret.
#[derive(Clone)]
pub struct Creds {
    pub id: String,
    pub secret: String,
}

/// moto's S3 server with authentication on, one bucket (`S3Server::BUCKET`), a read-write
/// and a read-only user; killed on drop.
pub struct S3Server {
    child: Child,
    pub endpoint: String,
    pub port: u16,
    pub writer: Creds,
    pub reader: Creds,
    _log: tempfile::NamedTempFile,
}

impl S3Server {
    pub const BUCKET: &'static str = "emshap-test";

    pub fn start() -> Self {
        use std::io::BufRead;
        let python = std::env::var("EMSHAP_CI_MOTO_PYTHON").unwrap_or_default();
        assert!(
            !python.is_empty() && Path::new(&python).is_file(),
            "moto's S3 server is not installed (EMSHAP_CI_MOTO_PYTHON={python:?}): run scripts/setup.sh --test and source its env file"
        );
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/servers/s3_server.py");
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut child = Command::new(&python)
            .arg(&script)
            .args(["--bucket", Self::BUCKET])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("start the S3 server");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
        let info: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!(
                "the S3 server did not start; its log:\n{}",
                std::fs::read_to_string(log.path()).unwrap_or_default()
            )
        });
        let creds = |who: &str| Creds {
            id: info[who]["id"].as_str().unwrap().into(),
            secret: info[who]["secret"].as_str().unwrap().into(),
        };
        let port = info["port"].as_u64().unwrap() as u16;
        S3Server {
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
            writer: creds("writer"),
            reader: creds("reader"),
            child,
            _log: log,
        }
    }

    /// `s3://BUCKET/PREFIX`.
    pub fn uri(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", Self::BUCKET)
    }

    /// The environment that points emshap-ci at `endpoint` with these credentials.
    pub fn env(endpoint: &str, creds: &Creds) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", endpoint),
            ("AWS_ACCESS_KEY_ID", &creds.id),
            ("AWS_SECRET_ACCESS_KEY", &creds.secret),
            ("AWS_REGION", "us-east-1"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// Runs emshap-ci in `dir` against this server with the writer's credentials.
    pub fn run(&self, dir: &Path, args: &[&str]) -> Output {
        self.run_as(dir, args, &self.endpoint, &self.writer)
    }

    /// Runs emshap-ci in `dir` against `endpoint` with `creds`.
    pub fn run_as(&self, dir: &Path, args: &[&str], endpoint: &str, creds: &Creds) -> Output {
        bin()
            .args(args)
            .envs(Self::env(endpoint, creds))
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .expect("emshap-ci runs")
    }

    /// The library's store on this server, as the writer.
    pub fn store(&self, prefix: &str) -> emshap_ci::store::s3::S3Store {
        emshap_ci::store::s3::S3Store::open_with(
            &self.uri(prefix),
            emshap_ci::store::s3::S3Options {
                endpoint: Some(self.endpoint.clone()),
                region: Some("us-east-1".into()),
                credentials: Some((self.writer.id.clone(), self.writer.secret.clone())),
                ..Default::default()
            },
        )
        .unwrap()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy on 127.0.0.1 in front of `upstream` that dies, as a crashed server would, as
/// soon as a client sends bytes containing `die_on` (a request line's start, such as
/// "PUT /bucket/key"): that connection is cut before the request reaches the server, and
/// every later connection is refused.
pub struct CuttingProxy {
    pub endpoint: String,
    dead: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl CuttingProxy {
    pub fn start(upstream_port: u16, die_on: &str) -> Self {
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let dead = Arc::new(AtomicBool::new(false));
        let needle = die_on.as_bytes().to_vec();
        let d = dead.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(mut client) = client else { continue };
                if d.load(Ordering::SeqCst) {
                    // Dead: closing the listener makes every later connection refused.
                    drop(client);
                    break;
                }
                let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream_port)) else {
                    continue;
                };
                let (d, needle) = (d.clone(), needle.clone());
                let mut server_r = server.try_clone().unwrap();
                let mut client_w = client.try_clone().unwrap();
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut server_r, &mut client_w);
                    let _ = client_w.shutdown(std::net::Shutdown::Both);
                });
                std::thread::spawn(move || {
                    // Requests are scanned as they pass; `die_on` is meant to be a request
                    // line's start, e.g. "PUT /bucket/key".
                    let mut buf = vec![0u8; 64 << 10];
                    let mut tail: Vec<u8> = Vec::new();
                    loop {
                        let n = match client.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        tail.extend_from_slice(&buf[..n]);
                        let hit = tail.windows(needle.len()).any(|w| w == needle.as_slice());
                        if hit || d.load(Ordering::SeqCst) {
                            d.store(true, Ordering::SeqCst);
                            // Wake the accept loop so that it closes the listener.
                            let _ = TcpStream::connect(("127.0.0.1", port));
                            let _ = client.shutdown(std::net::Shutdown::Both);
                            let _ = server.shutdown(std::net::Shutdown::Both);
                            break;
                        }
                        if server.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        // Keep enough to find a needle split across reads.
                        let keep = tail.len().saturating_sub(needle.len().max(8) + 256);
                        tail.drain(..keep);
                    }
                    let _ = server.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        CuttingProxy {
            endpoint: format!("http://127.0.0.1:{port}"),
            dead,
        }
    }

    pub fn died(&self) -> bool {
        self.dead.load(std::sync::atomic::Ordering::SeqCst)
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

// --- The GitHub REST API stand-in --------------------------------------------------------

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub auth: Option<String>,
    pub body: serde_json::Value,
}

/// One scripted reply: status, extra headers, JSON body.
pub type Reply = (u16, Vec<(String, String)>, serde_json::Value);

type Handler = dyn Fn(&Request, &mut State) -> Reply + Send;

/// What the stand-in remembers between requests: the PR's comments.
#[derive(Default)]
pub struct State {
    pub comments: Vec<serde_json::Value>,
    pub next_id: u64,
    /// Replies served before the handler, for scripted failures.
    pub queued: VecDeque<(String, Reply)>,
    /// Files served as they are to `GET <path>` (release assets), before anything else.
    pub files: std::collections::HashMap<String, Vec<u8>>,
}

pub struct Stand {
    pub url: String,
    pub requests: Arc<Mutex<Vec<Request>>>,
    pub state: Arc<Mutex<State>>,
}

impl Stand {
    pub fn start(handler: Box<Handler>) -> Stand {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new(Mutex::new(State {
            next_id: 1000,
            ..Default::default()
        }));
        let (reqs, st) = (requests.clone(), state.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    continue;
                }
                let mut parts = line.split_whitespace();
                let method = parts.next().unwrap_or("").to_string();
                let path = parts.next().unwrap_or("").to_string();
                let (mut len, mut auth) = (0usize, None);
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                        break;
                    }
                    let (k, v) = h.split_once(':').unwrap_or((&h, ""));
                    match k.trim().to_ascii_lowercase().as_str() {
                        "content-length" => len = v.trim().parse().unwrap_or(0),
                        "authorization" => auth = Some(v.trim().to_string()),
                        _ => {}
                    }
                }
                let mut body = vec![0u8; len];
                let _ = reader.read_exact(&mut body);
                let req = Request {
                    method,
                    path,
                    auth,
                    body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
                };
                reqs.lock().unwrap().push(req.clone());
                let file = st.lock().unwrap().files.get(&req.path).cloned();
                if let Some(bytes) = file.filter(|_| req.method == "GET") {
                    let mut out = conn;
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        bytes.len()
                    );
                    let _ = out.write_all(head.as_bytes());
                    let _ = out.write_all(&bytes);
                    continue;
                }
                let (status, headers, json) = {
                    let mut s = st.lock().unwrap();
                    let key = format!("{} {}", req.method, req.path);
                    match s
                        .queued
                        .iter()
                        .position(|(k, _)| key.starts_with(k.as_str()))
                    {
                        Some(i) => s.queued.remove(i).unwrap().1,
                        None => handler(&req, &mut s),
                    }
                };
                let text = json.to_string();
                let mut out = conn;
                let mut head = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
                    text.len()
                );
                for (k, v) in headers {
                    head.push_str(&format!("{k}: {v}\r\n"));
                }
                let _ = out.write_all(format!("{head}\r\n{text}").as_bytes());
            }
        });
        Stand {
            url,
            requests,
            state,
        }
    }

    /// A GitHub with one repository and one PR (#7), whose comments it keeps.
    pub fn github(login_status: u16) -> Stand {
        Stand::start(Box::new(move |req, s| {
            let ok = |v| (200, vec![], v);
            let path = req.path.split('?').next().unwrap_or("").to_string();
            match (req.method.as_str(), path.as_str()) {
                ("GET", "/user") if login_status == 200 => {
                    ok(serde_json::json!({"login": "ci-bot"}))
                }
                ("GET", "/user") => (
                    login_status,
                    vec![],
                    serde_json::json!({"message": "Resource not accessible by integration"}),
                ),
                ("GET", "/repos/acme/power") => ok(serde_json::json!({"full_name": "acme/power"})),
                ("GET", "/repos/acme/power/actions/workflows/deploy.yml") => ok(
                    serde_json::json!({"path": ".github/workflows/deploy.yml", "state": "active"}),
                ),
                ("GET", "/repos/acme/power/issues/7/comments") => {
                    ok(serde_json::Value::Array(s.comments.clone()))
                }
                ("POST", "/repos/acme/power/issues/7/comments") => {
                    s.next_id += 1;
                    let c = serde_json::json!({
                        "id": s.next_id, "body": req.body["body"], "user": {"login": "ci-bot"},
                        "html_url": format!("https://github.example/acme/power/pull/7#issuecomment-{}", s.next_id)
                    });
                    s.comments.push(c.clone());
                    (201, vec![], c)
                }
                (m, p) if p.starts_with("/repos/acme/power/issues/comments/") => {
                    let id: u64 = p.rsplit('/').next().unwrap().parse().unwrap();
                    let Some(i) = s.comments.iter().position(|c| c["id"] == id) else {
                        return (404, vec![], serde_json::json!({"message": "Not Found"}));
                    };
                    if m == "DELETE" {
                        s.comments.remove(i);
                        return (204, vec![], serde_json::Value::Null);
                    }
                    s.comments[i]["body"] = req.body["body"].clone();
                    ok(s.comments[i].clone())
                }
                ("POST", "/repos/acme/power/actions/workflows/deploy.yml/dispatches")
                | ("POST", "/repos/acme/power/actions/workflows/retrain.yml/dispatches") => {
                    (204, vec![], serde_json::Value::Null)
                }
                ("POST", p) if p.starts_with("/repos/acme/power/actions/workflows/") => {
                    (404, vec![], serde_json::json!({"message": "Not Found"}))
                }
                _ => (404, vec![], serde_json::json!({"message": "Not Found"})),
            }
        }))
    }

    /// Serves `reply` once, to the next request whose "METHOD /path" starts with `route`.
    pub fn queue(&self, route: String, reply: Reply) {
        self.state.lock().unwrap().queued.push_back((route, reply));
    }

    /// Serves `bytes` to every `GET path`.
    pub fn serve_file(&self, path: String, bytes: Vec<u8>) {
        self.state.lock().unwrap().files.insert(path, bytes);
    }

    /// The first POST it received.
    pub fn first_post(&self) -> Request {
        self.requests()
            .into_iter()
            .find(|r| r.method == "POST")
            .expect("a POST request")
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    pub fn comments(&self) -> Vec<serde_json::Value> {
        self.state.lock().unwrap().comments.clone()
    }
}

/// A test CA with a server certificate for 127.0.0.1 and a client certificate, and a second,
/// unrelated CA, made with the openssl command line.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn make() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let sh = |script: &str| {
            let o = Command::new("bash")
                .arg("-euc")
                .arg(script)
                .current_dir(d)
                .output()
                .expect("run openssl (scripts/setup.sh --test installs it)");
            assert!(
                o.status.success(),
                "openssl: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        };
        let key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        sh(&format!(
            "openssl req -x509 {key} -keyout ca.key -out ca.pem -days 2 -subj /CN=emshap-ci-test-ca 2>/dev/null
             openssl req -x509 {key} -keyout other-ca.key -out other-ca.pem -days 2 -subj /CN=someone-else 2>/dev/null
             openssl req {key} -keyout server.key -out server.csr -subj /CN=localhost 2>/dev/null
             printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > san.ext
             openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile san.ext 2>/dev/null
             openssl req {key} -keyout client.key -out client.csr -subj /CN=emshap-ci-client 2>/dev/null
             openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 2 2>/dev/null"
        ));
        Pki { dir }
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }
}

fn wait_port(port: u16, child: &mut Child, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "{what} did not listen on {port}: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// Tansu with sqlite storage, SCRAM-SHA-512 users and `--authentication`, behind a
/// TLS-terminating stunnel (Tansu's own TLS listener does not work); the broker advertises
/// the proxy's port, so every connection goes through TLS and SASL. Both killed on drop.
pub struct SecureTansu {
    tansu: Child,
    stunnel: Child,
    /// The proxy's address: what clients are given.
    pub brokers: String,
    _dir: tempfile::TempDir,
}

impl SecureTansu {
    /// `require_client_certificate`: the proxy asks for, and verifies, a client certificate
    /// signed by the test CA (mutual TLS).
    pub fn start(pki: &Pki, users: &[(&str, &str)], require_client_certificate: bool) -> Self {
        let exe = std::env::var("EMSHAP_CI_TANSU").unwrap_or_default();
        assert!(
            !exe.is_empty() && Path::new(&exe).is_file(),
            "the Tansu broker is not installed (EMSHAP_CI_TANSU={exe:?}): run scripts/setup.sh --test and source its env file"
        );
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // Tansu reads a sqlite URL's path relative to its working directory.
        let db = "sqlite://tansu.db".to_string();
        let (inner, outer) = (free_port(), free_port());
        let inner_url = format!("tcp://127.0.0.1:{inner}");
        let broker = |advertised: &str, auth: bool, log: &str| {
            let mut c = Command::new(&exe);
            c.args(["broker", "--listener-url", &inner_url])
                .args(["--advertised-listener-url", advertised])
                .args(["--storage-engine", &db, "--cluster-id", "emshap-ci-secure"]);
            if auth {
                c.arg("--authentication");
            }
            let mut child = c
                .current_dir(d)
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(d.join(log)).unwrap())
                .stderr(std::fs::File::create(d.join(format!("{log}.err"))).unwrap())
                .spawn()
                .expect("start tansu");
            wait_port(inner, &mut child, "tansu", &d.join(format!("{log}.err")));
            child
        };
        // SCRAM users are created through the broker itself, before it requires them.
        let mut setup = broker(&inner_url, false, "setup.log");
        for (user, password) in users {
            let o = Command::new(&exe)
                .args([
                    "user",
                    "create",
                    "--broker",
                    &inner_url,
                    "--mechanism",
                    "scram512",
                ])
                .args([user, password])
                .output()
                .expect("tansu user create");
            assert!(
                o.status.success(),
                "tansu user create {user}: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        let _ = setup.kill();
        let _ = setup.wait();
        let tansu = broker(&format!("tcp://127.0.0.1:{outer}"), true, "tansu.log");
        let mut conf = format!(
            "foreground = yes\npid =\noutput = {}\ndebug = 5\n[kafka]\naccept = 127.0.0.1:{outer}\nconnect = 127.0.0.1:{inner}\ncert = {}\nkey = {}\n",
            d.join("stunnel.log").display(),
            pki.path("server.pem"),
            pki.path("server.key"),
        );
        if require_client_certificate {
            conf.push_str(&format!(
                "CAfile = {}\nrequireCert = yes\nverifyChain = yes\n",
                pki.path("ca.pem")
            ));
        }
        std::fs::write(d.join("stunnel.conf"), conf).unwrap();
        let mut stunnel = Command::new("stunnel4")
            .arg(d.join("stunnel.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("stunnel.err")).unwrap())
            .spawn()
            .expect("start stunnel4 (scripts/setup.sh --test installs it)");
        wait_port(outer, &mut stunnel, "stunnel4", &d.join("stunnel.err"));
        SecureTansu {
            tansu,
            stunnel,
            brokers: format!("127.0.0.1:{outer}"),
            _dir: dir,
        }
    }
}

impl Drop for SecureTansu {
    fn drop(&mut self) {
        for c in [&mut self.stunnel, &mut self.tansu] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
