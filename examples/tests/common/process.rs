//! The shop's services as child processes.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The shop example's binary, which `cargo test` builds with the tests.
pub fn shop_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target directory");
    let binary = dir
        .join("examples")
        .join(format!("shop{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.exists(),
        "{} is missing: run the tests with `cargo test -p shop` (which builds the example) or \
         `cargo build --example shop` first",
        binary.display()
    );
    binary
}

/// A service running as a child process; killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Service {
    pub name: String,
    pub url: String,
    child: Child,
}

impl Service {
    pub(super) async fn spawn(name: &str, mut command: Command) -> Service {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the service");
        let stdout = child.stdout.take().expect("stdout");
        // The service prints `<name> listening on http://<address>` once it accepts
        // connections.
        let line = tokio::task::spawn_blocking(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            reader.read_line(&mut line).map(|_| line)
        });
        let line = tokio::time::timeout(Duration::from_secs(60), line)
            .await
            .unwrap_or_else(|_| panic!("{name} did not start within 60 s"))
            .expect("join")
            .expect("read stdout");
        let url = line
            .trim()
            .rsplit(' ')
            .next()
            .filter(|u| u.starts_with("http://"))
            .unwrap_or_else(|| panic!("{name} did not start: {line:?}"))
            .to_owned();
        Service {
            name: name.to_owned(),
            url,
            child,
        }
    }

    /// `kill -9`: no shutdown, no flush, whatever it was doing.
    pub fn kill(mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("wait");
    }

    /// SIGTERM, then wait for a graceful exit.
    pub fn stop(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        let exit = self.child.wait().expect("wait");
        assert!(exit.success(), "{} exited with {exit}", self.name);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
