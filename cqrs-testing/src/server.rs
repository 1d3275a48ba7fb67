//! A server of a test's own, to kill, restart, pause and resume without touching a shared one:
//! a command from an environment variable (`CQRS_KAFKA_SERVER`, `CQRS_POSTGRES_SERVER`, ...,
//! which `scripts/services.sh` sets) with `{port}` and `{dir}` filled in. It runs in a process
//! group of its own, so a signal reaches the server and every process it started at once, as a
//! crash or a frozen machine would.

#[cfg(unix)]
pub use own::OwnServer;

/// What a nemesis does to a server: freeze it and let it go on.
pub trait Pausable: Send + Sync {
    /// Every process of the server stops (`kill -STOP`), keeping its connections and state.
    fn pause(&self);
    /// They go on (`kill -CONT`).
    fn resume(&self);
}

#[cfg(unix)]
mod own {
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use super::Pausable;

    /// A server started by the test, stopped (`kill -9`) when dropped.
    #[derive(Debug)]
    pub struct OwnServer {
        name: String,
        template: String,
        child: Option<Child>,
        /// The port it listens on.
        pub port: u16,
        /// Its data directory, removed when it is dropped.
        pub dir: PathBuf,
    }

    impl OwnServer {
        /// Starts the command in `var` on a free port and a fresh directory, and waits until the
        /// port is open.
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
            let dir =
                std::env::temp_dir().join(format!("cqrs-own-{}", uuid::Uuid::new_v4().simple()));
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
            };
            server.restart().await;
            server
        }

        /// Starts the server again, on the same port and directory (after [`kill`](Self::kill)).
        ///
        /// # Panics
        /// When the port does not open within a minute.
        pub async fn restart(&mut self) {
            use std::os::unix::process::CommandExt;
            let var = &self.name;
            let command = self
                .template
                .replace("{port}", &self.port.to_string())
                .replace("{dir}", &self.dir.display().to_string());
            let mut parts = command.split_whitespace();
            let program = parts.next().expect("a command");
            let child = Command::new(program)
                .args(parts)
                .process_group(0)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("starting {var} ({command}): {e}"));
            self.child = Some(child);
            let deadline = Instant::now() + Duration::from_secs(60);
            let address = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
            while std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200))
                .is_err()
            {
                assert!(
                    Instant::now() < deadline,
                    "{var} did not open port {}",
                    self.port
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }

        /// `kill -9` of every process of the server; returns once they are gone.
        pub fn kill(&mut self) {
            if let Some(mut child) = self.child.take() {
                signal(&child, "-KILL");
                let _ = child.wait();
                let group = format!("-{}", child.id());
                while Command::new("kill")
                    .args(["-0", "--", &group])
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }

    impl Pausable for OwnServer {
        fn pause(&self) {
            if let Some(child) = &self.child {
                signal(child, "-STOP");
            }
        }

        fn resume(&self) {
            if let Some(child) = &self.child {
                signal(child, "-CONT");
            }
        }
    }

    impl Drop for OwnServer {
        fn drop(&mut self) {
            self.resume();
            self.kill();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn signal(child: &Child, signal: &str) {
        let group = format!("-{}", child.id());
        let _ = Command::new("kill").args([signal, "--", &group]).status();
    }
}
