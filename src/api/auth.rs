//! Bearer-token authentication, shared by the gRPC services and the metrics endpoint. Tokens are
//! kept as SHA-256 digests and a presented token is compared with every one of them in constant
//! time: neither a token's content nor its length leaks through timing.

use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{Request, Status};

use crate::config::AuthConfig;
use crate::telemetry::{Metrics, ServiceLabels};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("server.auth.tokens_file {path}: {source}")]
    ReadFile { path: PathBuf, source: std::io::Error },
    #[error("server.auth.tokens_env: environment variable `{0}` is not set or not valid UTF-8")]
    MissingEnv(String),
    #[error("server.auth: no tokens found (tokens_file and tokens_env are empty); no client could connect")]
    NoTokens,
}

/// The accepted bearer tokens.
#[derive(Clone)]
pub struct Tokens {
    digests: Arc<Vec<[u8; 32]>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} accepted)", self.digests.len())
    }
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl Tokens {
    pub fn new<S: AsRef<str>>(tokens: impl IntoIterator<Item = S>) -> Result<Self, AuthError> {
        let digests: Vec<[u8; 32]> = tokens
            .into_iter()
            .map(|t| t.as_ref().trim().to_owned())
            .filter(|t| !t.is_empty())
            .map(|t| digest(t.as_bytes()))
            .collect();
        if digests.is_empty() {
            return Err(AuthError::NoTokens);
        }
        Ok(Self { digests: Arc::new(digests) })
    }

    /// The tokens `config` names: the file's lines (blank lines and `#` comments skipped) and the
    /// environment variable's comma-separated values.
    pub fn load(config: &AuthConfig) -> Result<Self, AuthError> {
        Self::load_with(config, |var| std::env::var(var).ok())
    }

    /// As [`Self::load`], reading environment variables through `env`.
    fn load_with(config: &AuthConfig, env: impl Fn(&str) -> Option<String>) -> Result<Self, AuthError> {
        let mut tokens = Vec::new();
        if let Some(path) = &config.tokens_file {
            let text =
                std::fs::read_to_string(path).map_err(|source| AuthError::ReadFile { path: path.clone(), source })?;
            tokens.extend(text.lines().map(str::trim).filter(|l| !l.starts_with('#')).map(str::to_owned));
        }
        if let Some(var) = &config.tokens_env {
            let value = env(var).ok_or_else(|| AuthError::MissingEnv(var.clone()))?;
            tokens.extend(value.split(',').map(str::to_owned));
        }
        Self::new(tokens)
    }

    /// Whether `token` is one of the accepted ones. Every digest is compared, whatever matches.
    pub fn accepts(&self, token: &[u8]) -> bool {
        let presented = digest(token);
        let mut matched = subtle::Choice::from(0);
        for known in self.digests.iter() {
            matched |= known.ct_eq(&presented);
        }
        matched.into()
    }

    /// Checks an `authorization` header value: `Bearer <token>`.
    pub fn check_header(&self, value: Option<&[u8]>) -> Result<(), &'static str> {
        let Some(value) = value else {
            return Err("missing `authorization: Bearer <token>` metadata");
        };
        let token = value
            .strip_prefix(b"Bearer ")
            .or_else(|| value.strip_prefix(b"bearer "))
            .ok_or("`authorization` metadata must be `Bearer <token>`")?;
        if self.accepts(token) { Ok(()) } else { Err("bearer token is not accepted") }
    }
}

/// The gRPC interceptor every service sits behind: no tokens configured = every call passes.
#[derive(Clone)]
pub struct GrpcAuth {
    pub tokens: Option<Tokens>,
    pub metrics: Arc<Metrics>,
}

impl tonic::service::Interceptor for GrpcAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(tokens) = &self.tokens else {
            return Ok(request);
        };
        match tokens.check_header(request.metadata().get("authorization").map(|v| v.as_bytes())) {
            Ok(()) => Ok(request),
            Err(why) => {
                self.metrics.unauthenticated.get_or_create(&ServiceLabels { service: "grpc" }).inc();
                Err(Status::unauthenticated(why))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configured_tokens_pass() {
        let tokens = Tokens::new(["alpha-token", " beta-token ", ""]).expect("tokens");
        assert!(tokens.accepts(b"alpha-token"));
        assert!(tokens.accepts(b"beta-token"));
        assert!(!tokens.accepts(b"alpha-toke"));
        assert!(!tokens.accepts(b"alpha-token "));
        assert!(!tokens.accepts(b""));
        assert_eq!(tokens.check_header(Some(b"Bearer alpha-token")), Ok(()));
        assert!(tokens.check_header(Some(b"Basic alpha-token")).is_err());
        assert!(tokens.check_header(Some(b"Bearer nope")).is_err());
        assert!(tokens.check_header(None).is_err());
    }

    #[test]
    fn tokens_load_from_file_and_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens");
        std::fs::write(&path, "# operators\nfile-token\n\n  second  \n").expect("write");
        // The environment is read through a function: setting a variable while other tests'
        // threads run would race their reads.
        let env = |var: &str| (var == "LINESIGHT_TEST_TOKENS_A").then(|| "env-1,env-2".to_owned());
        let config = AuthConfig { tokens_file: Some(path.clone()), tokens_env: Some("LINESIGHT_TEST_TOKENS_A".into()) };
        let tokens = Tokens::load_with(&config, env).expect("load");
        for t in ["file-token", "second", "env-1", "env-2"] {
            assert!(tokens.accepts(t.as_bytes()), "{t}");
        }
        assert!(!tokens.accepts(b"# operators"));
        let missing = AuthConfig { tokens_file: None, tokens_env: Some("LINESIGHT_TEST_TOKENS_UNSET".into()) };
        assert!(matches!(Tokens::load_with(&missing, env), Err(AuthError::MissingEnv(_))));
        std::fs::write(&path, "# nothing\n\n").expect("write");
        let empty = AuthConfig { tokens_file: Some(path), tokens_env: None };
        assert!(matches!(Tokens::load(&empty), Err(AuthError::NoTokens)));
    }
}
