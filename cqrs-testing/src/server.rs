//! A server of a test's own, to kill, restart, pause and resume without touching a shared one:
//! a command from an environment variable (`CQRS_KAFKA_SERVER`, `CQRS_POSTGRES_SERVER`, ...,
//! which `scripts/services.sh` sets) with `{port}` and `{dir}` filled in.
//!
//! A signal goes to the server and to every process it started, found by walking `/proc`
//! (PostgreSQL's backends each make a session of their own, so the process group alone misses
//! them). A pause stops the server first, so that it starts nothing new meanwhile, then its
//! children; a kill finds them all first, then kills every one, as a crash of the machine
//! would. A signal that fails on a process still alive fails the test.

#[cfg(target_os = "linux")]
pub use own::OwnServer;

/// What a nemesis does to a server: freeze it and let it go on.
pub trait Pausable: Send + Sync {
    /// Every process of the server stops (`SIGSTOP`), keeping its connections and state.
    fn pause(&self);
    /// They go on (`SIGCONT`).
    fn resume(&self);
}

#[cfg(target_os = "linux")]
mod own {
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use super::Pausable;

    /// A server started by the test, stopped when dropped (`SIGTERM`, then `SIGKILL`).
    #[derive(Debug)]
    pub struct OwnServer {
        name: String,
        template: String,
        child: Option<Child>,
        /// The port it listens on.
        pub port: u16,
        /// Its data directory, removed when it is dropped.
        pub dir: PathBuf,
        /// Its output, kept for a failure's message.
        log: PathBuf,
    }

    impl OwnServer {
        /// Starts the command in `var` on a free port and a fresh directory, and waits until
        /// the port is open.
        ///
        /// # Panics
        /// When `var` is not set (the test says how to run it) or the server does not start.
        pub async fn start(var: &str) -> OwnServer {
            let template = std::env::var(var).unwrap_or_else(|_| {
                panic!(
                    "{var} is not set: this test starts, kills and pauses a server of its own \
                     (run ./scripts/test.sh, which sets it)"
                )
            });
            OwnServer::start_command(var, &template).await
        }

        /// Starts `template` (named `name` in messages), with `{port}` and `{dir}` filled in.
        ///
        /// # Panics
        /// When the server does not start.
        pub async fn start_command(name: &str, template: &str) -> OwnServer {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("a free port");
            let id = uuid::Uuid::new_v4().simple().to_string();
            let dir = std::env::temp_dir().join(format!("cqrs-own-{id}"));
            std::fs::create_dir(&dir).expect("the server's directory");
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                    .expect("the directory's mode");
            }
            let mut server = OwnServer {
                name: name.to_owned(),
                template: template.to_owned(),
                child: None,
                port,
                dir,
                log: std::env::temp_dir().join(format!("cqrs-own-{id}.log")),
            };
            server.restart().await;
            server
        }

        /// Starts the server again, on the same port and directory (after
        /// [`kill`](Self::kill)).
        ///
        /// # Panics
        /// When the server exits or the port does not open within a minute.
        pub async fn restart(&mut self) {
            use std::os::unix::process::CommandExt;
            let name = &self.name;
            let command = self
                .template
                .replace("{port}", &self.port.to_string())
                .replace("{dir}", &self.dir.display().to_string());
            let mut parts = command.split_whitespace();
            let program = parts.next().expect("a command");
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
                .expect("the server's log");
            let child = Command::new(program)
                .args(parts)
                .process_group(0)
                .stdout(log.try_clone().expect("the server's log"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {name} ({command}): {e}"));
            let child = self.child.insert(child);
            let deadline = Instant::now() + Duration::from_secs(60);
            let address = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
            while std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200))
                .is_err()
            {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "{name} exited ({status}) before it opened port {}: {}",
                        self.port,
                        tail(&self.log)
                    );
                }
                assert!(
                    Instant::now() < deadline,
                    "{name} did not open port {}: {}",
                    self.port,
                    tail(&self.log)
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }

        /// `SIGKILL` to the server and every process it started; returns once they are gone.
        ///
        /// # Panics
        /// When a signal fails on a process still alive, or one outlives its kill by ten
        /// seconds.
        pub fn kill(&mut self) {
            if let Err(e) = self.kill_all() {
                panic!("killing {}: {e}", self.name);
            }
        }

        fn kill_all(&mut self) -> Result<(), String> {
            let Some(mut child) = self.child.take() else {
                return Ok(());
            };
            let root = child.id();
            // Stopped first, the server starts nothing new while its children are listed.
            try_signal(root, "STOP")?;
            let all = family(root);
            for pid in &all {
                try_signal(*pid, "KILL")?;
            }
            let _ = child.wait();
            let deadline = Instant::now() + Duration::from_secs(10);
            while let Some(pid) = all.iter().find(|pid| alive(**pid)) {
                if Instant::now() > deadline {
                    return Err(format!("process {pid} outlived its kill"));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(())
        }

        /// The server's process id, while it runs.
        pub fn pid(&self) -> Option<u32> {
            self.child.as_ref().map(Child::id)
        }
    }

    impl Pausable for OwnServer {
        fn pause(&self) {
            if let Some(root) = self.pid() {
                // The server first, so that it starts nothing new meanwhile.
                signal(root, "STOP");
                for pid in family(root).into_iter().skip(1) {
                    signal(pid, "STOP");
                }
            }
        }

        fn resume(&self) {
            if let Some(root) = self.pid() {
                // Children first: the server, going on, finds them running.
                for pid in family(root).into_iter().rev() {
                    signal(pid, "CONT");
                }
            }
        }
    }

    impl Drop for OwnServer {
        fn drop(&mut self) {
            // Nothing here panics: a drop may run while a failed test unwinds.
            if let Some(root) = self.pid() {
                let all = family(root);
                for pid in all.iter().rev() {
                    let _ = try_signal(*pid, "CONT");
                }
                // A clean stop lets the server give back what outlives it (PostgreSQL's
                // shared memory); a kill after a few seconds if it does not.
                let _ = try_signal(root, "TERM");
                let deadline = Instant::now() + Duration::from_secs(5);
                while all.iter().any(|pid| alive(*pid)) && Instant::now() < deadline {
                    if let Some(child) = self.child.as_mut() {
                        let _ = child.try_wait();
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            let _ = self.kill_all();
            let _ = std::fs::remove_dir_all(&self.dir);
            let _ = std::fs::remove_file(&self.log);
        }
    }

    /// `root` and every process descended from it, parents before children.
    fn family(root: u32) -> Vec<u32> {
        let mut parents: Vec<(u32, u32)> = Vec::new();
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                    continue;
                };
                if let Some((ppid, _)) = stat(pid) {
                    parents.push((pid, ppid));
                }
            }
        }
        let mut all = vec![root];
        let mut i = 0;
        while i < all.len() {
            let parent = all[i];
            all.extend(
                parents
                    .iter()
                    .filter(|(_, ppid)| *ppid == parent)
                    .map(|(pid, _)| *pid),
            );
            i += 1;
        }
        all
    }

    /// A process's parent and state, from `/proc/<pid>/stat`.
    fn stat(pid: u32) -> Option<(u32, char)> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The name is in parentheses and may hold anything: the rest follows the last one.
        let rest = &text[text.rfind(')')? + 1..];
        let mut fields = rest.split_whitespace();
        let state = fields.next()?.chars().next()?;
        let ppid = fields.next()?.parse().ok()?;
        Some((ppid, state))
    }

    /// Whether a process still runs (a zombie has ended).
    fn alive(pid: u32) -> bool {
        stat(pid).is_some_and(|(_, state)| state != 'Z' && state != 'X')
    }

    /// Sends a signal; a failure on a process still alive fails the test.
    fn signal(pid: u32, name: &str) {
        if let Err(e) = try_signal(pid, name) {
            panic!("{e}");
        }
    }

    /// Sends a signal; a process already gone is no failure.
    fn try_signal(pid: u32, name: &str) -> Result<(), String> {
        let sent = Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .stderr(Stdio::null())
            .status();
        match sent {
            Ok(status) if status.success() => Ok(()),
            _ if !alive(pid) => Ok(()),
            Ok(status) => Err(format!("kill -{name} {pid} failed ({status})")),
            Err(e) => Err(format!("kill -{name} {pid} could not run: {e}")),
        }
    }

    /// The end of the server's output.
    fn tail(log: &std::path::Path) -> String {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let start = text.len().saturating_sub(1500);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(text.len());
        text[start..].to_owned()
    }
}
