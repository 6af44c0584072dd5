//! The real Python peers: a virtualenv with the pinned packages, and a line-driven peer process.

use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use super::within;

fn python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python")
}

/// Returns the interpreter of a virtualenv holding the pinned Python packages, creating the
/// virtualenv on first use. A missing `python3` or a failed install fails the test.
pub fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(create_venv)
}

fn run(command: &mut Command, what: &str) {
    let output = command.output().unwrap_or_else(|error| {
        panic!(
            "{what}: could not start {command:?}: {error}; install Python 3.11 with venv and pip"
        )
    });
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn create_venv() -> PathBuf {
    let requirements_path = python_dir().join("requirements.txt");
    let requirements = std::fs::read_to_string(&requirements_path).expect("read requirements.txt");
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-venv");
    let interpreter = venv.join("bin").join("python");
    let marker = venv.join("tidings-requirements.txt");

    // Test binaries run in parallel; the lock keeps one of them installing at a time.
    std::fs::create_dir_all(env!("CARGO_TARGET_TMPDIR")).expect("create target tmp dir");
    let lock = File::create(venv.with_extension("lock")).expect("create venv lock file");
    lock.lock().expect("lock the venv");

    let ready = std::fs::read_to_string(&marker).is_ok_and(|installed| installed == requirements);
    if !ready {
        let _ = std::fs::remove_dir_all(&venv);
        let system_python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
        run(
            Command::new(&system_python).args(["-m", "venv"]).arg(&venv),
            "creating the virtualenv",
        );
        run(
            Command::new(&interpreter)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "-r",
                ])
                .arg(&requirements_path),
            "installing the Python peers",
        );
        std::fs::write(&marker, &requirements).expect("write venv marker");
    }
    interpreter
}

/// A running `peer.py` process, driven with JSON lines.
pub struct PythonPeer {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    backlog: VecDeque<Value>,
    next_id: u64,
    log: PathBuf,
}

impl PythonPeer {
    /// Starts `peer.py` with `args`, such as `["pubsub-client", url]`.
    pub async fn spawn(args: &[&str]) -> Self {
        let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "peer-{}-{}.log",
            std::process::id(),
            super::unique()
        ));
        let stderr = File::create(&log).expect("create peer log");
        let mut child = tokio::process::Command::new(python())
            .arg(python_dir().join("peer.py"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("start peer.py");
        let stdin = child.stdin.take().expect("stdin piped");
        let stdout = child.stdout.take().expect("stdout piped");
        Self {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
            backlog: VecDeque::new(),
            next_id: 1,
            log,
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(4000);
        text[start..].to_owned()
    }

    async fn read_line(&mut self, what: &str) -> Value {
        let line = match tokio::time::timeout(super::WAIT, self.lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => panic!(
                "peer exited while waiting for {what}; its log:\n{}",
                self.log_tail()
            ),
            Ok(Err(error)) => panic!("reading peer output failed: {error}"),
            Err(_) => panic!(
                "timed out waiting for {what}; peer log:\n{}",
                self.log_tail()
            ),
        };
        serde_json::from_str(&line)
            .unwrap_or_else(|error| panic!("peer wrote invalid JSON {line:?}: {error}"))
    }

    /// Sends a command and returns its result; a Python exception becomes `Err`.
    pub async fn request(&mut self, mut command: Value) -> Result<Value, String> {
        let id = self.next_id;
        self.next_id += 1;
        command["id"] = json!(id);
        let mut line = command.to_string();
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .await
            .expect("write to peer");
        self.stdin.flush().await.expect("flush peer stdin");
        loop {
            let message = self.read_line(&format!("the reply to {command}")).await;
            if message["id"] == json!(id) {
                return match message.get("error") {
                    Some(error) => Err(error.as_str().unwrap_or_default().to_owned()),
                    None => Ok(message["result"].clone()),
                };
            }
            self.backlog.push_back(message);
        }
    }

    /// Returns the next event line whose `event` field equals `kind`.
    pub async fn event(&mut self, kind: &str) -> Value {
        if let Some(index) = self
            .backlog
            .iter()
            .position(|message| message["event"] == kind)
        {
            return self.backlog.remove(index).expect("index in range");
        }
        loop {
            let message = self.read_line(&format!("a {kind:?} event")).await;
            if message["event"] == kind {
                return message;
            }
            self.backlog.push_back(message);
        }
    }

    /// Closes stdin, which ends the peer, and waits for it to exit.
    pub async fn finish(mut self) {
        drop(self.stdin);
        let _ = within("peer exit", self.child.wait()).await;
    }
}
