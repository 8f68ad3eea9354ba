//! A real OCI registry for tests: Debian's `docker-registry` (distribution 2.8) in a
//! SimNode's network namespace — plain HTTP; TLS with htpasswd basic auth; or plain
//! HTTP with token auth, where clients get a bearer token from a [`TokenServer`]
//! (the Docker Hub flow) — images pushed with skopeo.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::apiserver::pki::Ca;
use crate::simnode::SimNode;

/// Registry port on its node.
pub const PORT: u16 = 5000;

/// A running registry; stopped on drop.
pub struct Registry {
    child: Child,
    dir: PathBuf,
    /// `ip:port`.
    pub addr: String,
    /// The CA of its TLS certificate, when it serves TLS.
    pub ca_pem: Option<String>,
    /// User and password it requires, when it requires any.
    pub login: Option<(String, String)>,
}

impl Registry {
    /// Starts a registry on `node`; with `login`, it serves TLS and requires that user.
    pub fn start(node: &SimNode, login: Option<(&str, &str)>) -> anyhow::Result<Self> {
        Self::start_with(node, login, None)
    }

    /// Starts a plain-HTTP registry on `node` that accepts only bearer tokens of
    /// `tokens` (which holds the login).
    pub fn start_with_tokens(node: &SimNode, tokens: &TokenServer) -> anyhow::Result<Self> {
        let mut reg = Self::start_with(node, None, Some(tokens))?;
        reg.login = Some(tokens.login.clone());
        Ok(reg)
    }

    fn start_with(
        node: &SimNode,
        login: Option<(&str, &str)>,
        tokens: Option<&TokenServer>,
    ) -> anyhow::Result<Self> {
        let dir = node.dir("registry");
        std::fs::create_dir_all(dir.join("data"))?;
        let addr = format!("{}:{PORT}", node.address);
        let mut config = format!(
            "version: 0.1\nlog: {{level: info}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nhttp:\n  addr: {addr}\n",
            dir.join("data").display()
        );
        let mut ca_pem = None;
        if let Some(t) = tokens {
            std::fs::write(dir.join("token-ca.crt"), &t.cert_pem)?;
            config.push_str(&format!(
                "auth:\n  token: {{realm: '{}', service: {TOKEN_SERVICE}, issuer: {TOKEN_ISSUER}, rootcertbundle: {}}}\n",
                t.realm,
                dir.join("token-ca.crt").display()
            ));
        }
        if let Some((user, pass)) = login {
            let ca = Ca::new()?;
            let pair = ca.serving("registry", &[], &[IpAddr::V4(node.address)])?;
            std::fs::write(dir.join("tls.crt"), &pair.cert_pem)?;
            std::fs::write(dir.join("tls.key"), &pair.key_pem)?;
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, pass])
                .output()
                .context("htpasswd (Debian apache2-utils; `cargo xtask setup` installs it)")?;
            if !out.status.success() {
                bail!("htpasswd: {}", String::from_utf8_lossy(&out.stderr));
            }
            std::fs::write(dir.join("htpasswd"), &out.stdout)?;
            config.push_str(&format!(
                "  tls: {{certificate: {}, key: {}}}\nauth:\n  htpasswd: {{realm: kltest, path: {}}}\n",
                dir.join("tls.crt").display(),
                dir.join("tls.key").display(),
                dir.join("htpasswd").display()
            ));
            ca_pem = Some(ca.cert_pem.clone());
            std::fs::write(dir.join("ca.crt"), &ca.cert_pem)?;
        }
        std::fs::write(dir.join("config.yml"), config)?;
        let log = std::fs::File::create(dir.join("registry.log"))?;
        let child = node
            .command("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("docker-registry (Debian docker-registry; `cargo xtask setup` installs it)")?;
        let reg = Self {
            child,
            dir,
            addr,
            ca_pem,
            login: login.map(|(u, p)| (u.to_string(), p.to_string())),
        };
        let start = Instant::now();
        while !reg.log().contains("listening on") {
            if start.elapsed() > Duration::from_secs(10) {
                bail!("the registry did not listen on {}: {}", reg.addr, reg.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(reg)
    }

    /// The registry's own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }

    /// Where it stores blobs (`docker/registry/v2/blobs/sha256/<2>/<hex>/data`).
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// The CA file of its certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// Pushes `layout:tag` as `repo:tag` with skopeo, from `node`'s network namespace.
    pub fn push(&self, node: &SimNode, layout: &Path, tag: &str, repo: &str) -> anyhow::Result<()> {
        let mut cmd = node.command("skopeo");
        cmd.args(["copy", "--dest-tls-verify=false"]);
        if let Some((u, p)) = &self.login {
            cmd.arg(format!("--dest-creds={u}:{p}"));
        }
        cmd.arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{repo}:{tag}", self.addr));
        let out = cmd.output()?;
        if !out.status.success() {
            bail!("skopeo push: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `service` a token server's tokens are for.
pub const TOKEN_SERVICE: &str = "kltest-registry";
/// The `iss` of its tokens.
pub const TOKEN_ISSUER: &str = "kltest-token-issuer";

/// A registry token server (the distribution token spec): `GET <realm>?service=…&scope=…`
/// with basic credentials answers `{"token": <JWT>}` — ES256, signed by a key whose
/// self-signed certificate is in the `x5c` header and in the registry's
/// `rootcertbundle` — granting the scopes asked for to the one known user; anonymous
/// requests get a token that grants nothing; wrong credentials get 401. Served from
/// a thread of the test process on the lab bridge; stopped on drop.
pub struct TokenServer {
    /// The URL clients are sent to.
    pub realm: String,
    pub login: (String, String),
    cert_pem: String,
    /// Every request as `<user or "-"> <status> <scopes>`.
    requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Signer {
    key: aws_lc_rs::signature::EcdsaKeyPair,
    x5c: String,
}

impl Signer {
    fn token(&self, user: &str, scopes: &[String]) -> anyhow::Result<String> {
        use base64::Engine as _;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
        let access: Vec<serde_json::Value> = scopes
            .iter()
            .filter_map(|s| {
                // repository:<name>:<actions>; names may hold no ':' but the
                // registry part of a scope never appears here.
                let (kind, rest) = s.split_once(':')?;
                let (name, actions) = rest.rsplit_once(':')?;
                Some(serde_json::json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
            })
            .collect();
        let now = jiff::Timestamp::now().as_second();
        let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "x5c": [self.x5c]});
        let claims = serde_json::json!({
            "iss": TOKEN_ISSUER, "sub": user, "aud": TOKEN_SERVICE,
            "exp": now + 300, "nbf": now - 10, "iat": now,
            "jti": uuid::Uuid::new_v4().to_string(), "access": access,
        });
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let sig = self
            .key
            .sign(&aws_lc_rs::rand::SystemRandom::new(), input.as_bytes())
            .map_err(|_| anyhow::anyhow!("signing a registry token failed"))?;
        Ok(format!("{input}.{}", B64.encode(sig.as_ref())))
    }
}

impl TokenServer {
    /// Starts a token server on the lab bridge that knows `user`/`pass`.
    pub fn start(lab: &crate::simnode::Lab, user: &str, pass: &str) -> anyhow::Result<Self> {
        use base64::Engine as _;
        let key = rcgen::KeyPair::generate()?;
        let cert = rcgen::CertificateParams::new(vec!["kltest-token-signer".to_string()])?
            .self_signed(&key)?;
        let signer = Signer {
            key: aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
                &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                &key.serialize_der(),
            )
            .map_err(|e| anyhow::anyhow!("token signing key: {e}"))?,
            x5c: base64::engine::general_purpose::STANDARD.encode(cert.der()),
        };
        let listener = lab.listen_on_bridge(0)?;
        let realm = format!("http://{}/token", listener.local_addr()?);
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let login = (user.to_string(), pass.to_string());
        let thread = {
            let (requests, stop, login) = (requests.clone(), stop.clone(), login.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            let line = serve_token(conn, &signer, &login);
                            if let Ok(mut r) = requests.lock() {
                                r.push(line);
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
        };
        Ok(Self {
            realm,
            login,
            cert_pem: cert.pem(),
            requests,
            stop,
            thread: Some(thread),
        })
    }

    /// The requests served so far, as `<user or "-"> <status> <scopes>`.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

/// Answers one token request; returns the line recorded for it.
fn serve_token(conn: std::net::TcpStream, signer: &Signer, login: &(String, String)) -> String {
    use base64::Engine as _;
    use std::io::{BufRead as _, Write as _};
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = std::io::BufReader::new(&conn);
    let mut request_line = String::new();
    let _ = reader.read_line(&mut request_line);
    let mut auth = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("authorization")
        {
            auth = v.trim().strip_prefix("Basic ").map(str::to_string);
        }
    }
    let target = request_line.split(' ').nth(1).unwrap_or("");
    let query = url::Url::parse(&format!("http://x{target}")).ok();
    let scopes: Vec<String> = query
        .iter()
        .flat_map(|u| u.query_pairs().into_owned().collect::<Vec<_>>())
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_string).collect::<Vec<_>>())
        .collect();
    let user = auth.and_then(|a| {
        let text = base64::engine::general_purpose::STANDARD.decode(a).ok()?;
        let text = String::from_utf8(text).ok()?;
        let (u, p) = text.split_once(':')?;
        Some((u.to_string(), p.to_string()))
    });
    let (status, body, who) = match &user {
        Some(u) if u == login => match signer.token(&u.0, &scopes) {
            Ok(t) => (
                "200 OK",
                serde_json::json!({"token": t, "expires_in": 300}),
                u.0.clone(),
            ),
            Err(e) => (
                "500 Internal Server Error",
                serde_json::json!({"error": e.to_string()}),
                u.0.clone(),
            ),
        },
        Some(u) => (
            "401 Unauthorized",
            serde_json::json!({"errors": [{"code": "UNAUTHORIZED", "message": "wrong user or password"}]}),
            u.0.clone(),
        ),
        None => match signer.token("", &[]) {
            Ok(t) => (
                "200 OK",
                serde_json::json!({"token": t, "expires_in": 300}),
                "-".to_string(),
            ),
            Err(e) => (
                "500 Internal Server Error",
                serde_json::json!({"error": e.to_string()}),
                "-".to_string(),
            ),
        },
    };
    let body = body.to_string();
    let mut out = &conn;
    let _ = write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    format!("{who} {} {}", &status[..3], scopes.join(" "))
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
