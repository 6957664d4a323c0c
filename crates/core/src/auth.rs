//! Apps (account domains) and login tokens.
//!
//! A business server signs a JWT for each of its users: claims `app`, `sub`
//! (the uid), `exp` and `iat`, HS256 with the app's secret or RS256/ES256
//! with the app's private key (Switchboard holds only the public key). The
//! platform never sees passwords.
//!
//! Token rules (RFC 7519, docs/protocol.md): `exp` is required unless the
//! app sets `jwt_exp_optional`; `exp`, `nbf` and `iat` are NumericDates
//! (seconds, a fraction allowed); `exp` and `nbf` are checked with
//! [`LEEWAY_SECS`] of leeway for clock skew; `iss` and `aud` are checked when
//! the app configures `jwt_issuer` / `jwt_audience` (a token with an `aud`
//! is refused by an app that configures none, as RFC 7519 4.1.3 asks).

use std::collections::HashMap;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

use switchboard_proto::limits::{self, MAX_APP_LEN};

use crate::error::LogicError;
use crate::model::UserKey;

/// One app's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppConfig {
    /// The app's name (the `app` claim and the `app` of every user).
    pub name: String,
    /// HS256 secret for login tokens.
    pub jwt_secret: Option<String>,
    /// PEM public key for RS256 or ES256 login tokens.
    pub jwt_public_key: Option<String>,
    /// Key for the HTTP API (`Authorization: Bearer`).
    pub api_key: Option<String>,
    /// Accept login tokens without an `exp` claim (they never expire; only
    /// a revocation ends them). Default false: `exp` is required.
    pub jwt_exp_optional: bool,
    /// When set, a token's `iss` claim must be exactly this.
    pub jwt_issuer: Option<String>,
    /// When set, a token's `aud` claim must be (or, as an array, contain)
    /// this.
    pub jwt_audience: Option<String>,
    /// Apps whose users this app's users may message (cross-domain chat).
    /// A pair is allowed when either side lists the other.
    pub cross_app: Vec<String>,
    /// Where the bus delivers this app's c2s reports and events (docs/bus.md).
    pub webhooks: Vec<crate::hooks::WebhookConfig>,
    /// A synchronous HTTP check of every c2c before it is stored.
    pub before_send: Option<crate::hooks::BeforeSendConfig>,
    /// The built-in sensitive-word filter, applied to UTF-8 c2c bodies.
    pub word_filter: Option<crate::hooks::WordFilterConfig>,
    /// How long after sending a user may recall a message, in seconds
    /// (default 120; 0: users may not recall). The business may recall
    /// any message over HTTP, at any time.
    pub recall_window_secs: Option<u64>,
    /// How long after sending a user may edit a message, in seconds
    /// (default 86400; 0: users may not edit).
    pub edit_window_secs: Option<u64>,
    /// Offline notifications (`notification` events, [`crate::notify`]):
    /// absent, none are made.
    pub notifications: Option<NotificationConfig>,
}

/// When and how an app's users are told, through the business's push
/// provider, about messages that found none of their devices online.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotificationConfig {
    /// Messages to one receiver within this many milliseconds of the first
    /// make one notification (default 3000).
    pub window_ms: Option<u64>,
    /// Put the start of a UTF-8 body (at most [`crate::notify::PREVIEW_CHARS`]
    /// characters) in the notification. Default false: no content leaves
    /// for the push provider.
    pub preview: bool,
    /// Groups up to this many members notify their offline members (default
    /// 1000); a larger group's posts make no notifications (finding its
    /// offline members would cost a presence lookup per member per post).
    pub group_max_members: Option<u64>,
}

/// [`NotificationConfig::window_ms`] when not set.
pub const DEFAULT_NOTIFICATION_WINDOW_MS: u64 = 3000;
/// [`NotificationConfig::group_max_members`] when not set.
pub const DEFAULT_NOTIFICATION_GROUP_MAX: u64 = 1000;

impl NotificationConfig {
    /// How long a receiver's notification collects messages.
    pub fn window(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.window_ms.unwrap_or(DEFAULT_NOTIFICATION_WINDOW_MS))
    }

    /// The largest group whose posts notify offline members.
    pub fn group_max_members(&self) -> u64 {
        self.group_max_members
            .unwrap_or(DEFAULT_NOTIFICATION_GROUP_MAX)
    }
}

/// [`AppConfig::recall_window_secs`] when not set.
pub const DEFAULT_RECALL_WINDOW_SECS: u64 = 120;
/// [`AppConfig::edit_window_secs`] when not set.
pub const DEFAULT_EDIT_WINDOW_SECS: u64 = 24 * 3600;

impl AppConfig {
    /// How long after sending a user may recall a message.
    pub fn recall_window(&self) -> std::time::Duration {
        std::time::Duration::from_secs(
            self.recall_window_secs
                .unwrap_or(DEFAULT_RECALL_WINDOW_SECS),
        )
    }

    /// How long after sending a user may edit a message.
    pub fn edit_window(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.edit_window_secs.unwrap_or(DEFAULT_EDIT_WINDOW_SECS))
    }

    /// Whether some webhook of this app wants events of `topic` and type
    /// `kind`: events nobody subscribed to are not written to the outbox.
    pub fn wants_event(&self, topic: &str, kind: &str) -> bool {
        self.webhooks.iter().any(|w| w.matches(topic, kind))
    }
}

/// Claims of a login token, as [`issue_token`] signs them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub app: String,
    pub sub: String,
    pub exp: u64,
}

/// Leeway for clock skew between the business server and this node, on
/// `exp` (a token is refused from `exp + 30 s`) and `nbf` (accepted from
/// `nbf - 30 s`).
pub const LEEWAY_SECS: u64 = 30;

/// The claims of a verified token that the platform uses; `exp`, `nbf`,
/// `iss` and `aud` were checked by `jsonwebtoken`.
#[derive(Deserialize)]
struct Verified {
    app: String,
    sub: String,
    /// A NumericDate: seconds, maybe with a fraction.
    #[serde(default)]
    iat: Option<f64>,
}

/// The only claim read before the signature is checked (it picks the key).
#[derive(Deserialize)]
struct Unverified {
    app: String,
}

/// A verified login token.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedToken {
    pub user: UserKey,
    /// The `iat` claim (seconds since the epoch), when the token has one.
    pub issued_at: Option<f64>,
}

struct CompiledApp {
    config: AppConfig,
    keys: Vec<(DecodingKey, Validation)>,
}

/// Every configured app, with its token keys parsed once.
pub struct Apps {
    apps: HashMap<String, CompiledApp>,
}

/// Why an app's configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum AppConfigError {
    #[error("app {app}: {reason}")]
    Invalid { app: String, reason: String },
}

impl Apps {
    /// Compiles the apps' token keys, refusing (naming the app and the
    /// setting) what could only fail every login later: both a secret and a
    /// public key, a private key given as `jwt_public_key`, an EC key on a
    /// curve other than P-256 (ES256 is P-256 only).
    pub fn new(configs: impl IntoIterator<Item = AppConfig>) -> Result<Apps, AppConfigError> {
        let mut apps = HashMap::new();
        for config in configs {
            let invalid = |reason: String| AppConfigError::Invalid {
                app: config.name.clone(),
                reason,
            };
            if config.name.is_empty() || config.name.len() > MAX_APP_LEN {
                return Err(invalid(format!("name must be 1 to {MAX_APP_LEN} bytes")));
            }
            let keys = match (&config.jwt_secret, &config.jwt_public_key) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        "has both jwt_secret and jwt_public_key; set one (HS256 with the \
                         secret, or RS256/ES256 with the public key)"
                            .into(),
                    ));
                }
                (None, None) => return Err(invalid("needs jwt_secret or jwt_public_key".into())),
                (Some(secret), None) => {
                    if secret.len() < 16 {
                        return Err(invalid("jwt_secret must be at least 16 bytes".into()));
                    }
                    vec![(
                        Algorithm::HS256,
                        DecodingKey::from_secret(secret.as_bytes()),
                    )]
                }
                (None, Some(pem)) => vec![public_key(pem).map_err(invalid)?],
            };
            if apps.contains_key(&config.name) {
                return Err(invalid("defined twice".into()));
            }
            let keys = keys
                .into_iter()
                .map(|(alg, key)| (key, validation(&config, alg)))
                .collect();
            apps.insert(config.name.clone(), CompiledApp { config, keys });
        }
        Ok(Apps { apps })
    }

    /// The app's configuration.
    pub fn get(&self, app: &str) -> Option<&AppConfig> {
        self.apps.get(app).map(|a| &a.config)
    }

    /// Every app's name.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.apps.keys().map(String::as_str)
    }

    /// Verifies a login token: signature with the app's key, expiry, claims.
    pub fn verify(&self, token: &str) -> Result<UserKey, LogicError> {
        self.verify_token(token).map(|v| v.user)
    }

    /// [`Apps::verify`], also giving the token's `iat` (for revocations).
    pub fn verify_token(&self, token: &str) -> Result<VerifiedToken, LogicError> {
        // The app claim picks the key; it is trusted only after the signature checks.
        let unverified: Unverified = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|_| LogicError::TokenInvalid("not a JWT with an app claim".into()))?;
        let app = self
            .apps
            .get(&unverified.app)
            .ok_or_else(|| LogicError::UnknownApp(unverified.app.clone()))?;
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| LogicError::TokenInvalid(e.to_string()))?;
        let (key, validation) = app
            .keys
            .iter()
            .find(|(_, v)| v.algorithms.contains(&header.alg))
            .ok_or_else(|| {
                LogicError::TokenInvalid(format!(
                    "algorithm {:?} is not configured for app {}",
                    header.alg, app.config.name
                ))
            })?;
        let data = jsonwebtoken::decode::<Verified>(token, key, validation).map_err(|e| match e
            .kind()
        {
            ErrorKind::ExpiredSignature => LogicError::TokenExpired,
            ErrorKind::ImmatureSignature => {
                LogicError::TokenInvalid("not valid yet (nbf is in the future)".into())
            }
            ErrorKind::MissingRequiredClaim(c) => {
                LogicError::TokenInvalid(format!("the {c} claim is required"))
            }
            ErrorKind::InvalidIssuer => LogicError::TokenInvalid(format!(
                "iss is not the issuer app {} expects",
                app.config.name
            )),
            ErrorKind::InvalidAudience => LogicError::TokenInvalid(format!(
                "aud does not name the audience app {} expects",
                app.config.name
            )),
            _ => LogicError::TokenInvalid(e.to_string()),
        })?;
        let claims = data.claims;
        if let Err(e) = limits::check_id("sub", &claims.sub) {
            return Err(LogicError::TokenInvalid(e.0));
        }
        Ok(VerifiedToken {
            user: UserKey::new(claims.app, claims.sub),
            issued_at: claims.iat.filter(|t| t.is_finite()),
        })
    }

    /// Whether users of `from` may message users of `to`.
    pub fn may_message(&self, from: &str, to: &str) -> bool {
        if from == to {
            return true;
        }
        let lists = |a: &str, b: &str| {
            self.get(a)
                .is_some_and(|c| c.cross_app.iter().any(|x| x == b))
        };
        lists(from, to) || lists(to, from)
    }
}

/// The claims [`issue_token`] signs: [`Claims`] and `iat`, so a revocation
/// (`POST /v1/apps/{app}/users/{uid}/revoke`) can refuse the token.
#[derive(Serialize)]
struct Issued<'a> {
    app: &'a str,
    sub: &'a str,
    iat: u64,
    exp: u64,
}

/// Signs an HS256 login token (for `switchboard token` and tests).
pub fn issue_token(
    secret: &str,
    app: &str,
    uid: &str,
    ttl_secs: u64,
) -> Result<String, LogicError> {
    let now = jsonwebtoken::get_current_timestamp();
    let claims = Issued {
        app,
        sub: uid,
        iat: now,
        exp: now + ttl_secs,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| LogicError::Internal(e.to_string()))
}

/// How an app's tokens are checked with `alg`.
fn validation(config: &AppConfig, alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = LEEWAY_SECS;
    v.validate_nbf = true;
    if config.jwt_exp_optional {
        v.set_required_spec_claims(&["sub"]);
    } else {
        v.set_required_spec_claims(&["exp", "sub"]);
    }
    if let Some(iss) = &config.jwt_issuer {
        v.set_issuer(&[iss]);
        v.required_spec_claims.insert("iss".into());
    }
    if let Some(aud) = &config.jwt_audience {
        v.set_audience(&[aud]);
        v.required_spec_claims.insert("aud".into());
    }
    v
}

/// The DER object identifier of the P-256 curve (prime256v1,
/// 1.2.840.10045.3.1.7), as it appears in an EC key's algorithm parameters.
const P256_OID: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// The algorithm and key of a `jwt_public_key`, or why it cannot verify
/// tokens.
fn public_key(pem: &str) -> Result<(Algorithm, DecodingKey), String> {
    // jsonwebtoken takes an RSA private key as a "public" key and then
    // refuses every token: the PEM label tells them apart.
    if pem
        .lines()
        .any(|l| l.starts_with("-----BEGIN") && l.contains("PRIVATE"))
    {
        return Err("jwt_public_key holds a PRIVATE key; give its public key \
                    (`openssl pkey -in key.pem -pubout`) and keep the private key \
                    with the business server"
            .into());
    }
    if let Ok(k) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
        return Ok((Algorithm::RS256, k));
    }
    if let Ok(k) = DecodingKey::from_ec_pem(pem.as_bytes()) {
        let der = pem_der(pem).unwrap_or_default();
        if !der.windows(P256_OID.len()).any(|w| w == P256_OID) {
            return Err("jwt_public_key is an EC key on a curve other than P-256; \
                        ES256 (the only EC algorithm accepted) needs a P-256 key"
                .into());
        }
        return Ok((Algorithm::ES256, k));
    }
    Err("jwt_public_key is neither an RSA nor an EC (P-256) public key in PEM".into())
}

/// The DER bytes of the first PEM block.
fn pem_der(pem: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let body: String = pem
        .lines()
        .map(str::trim)
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123";

    fn apps() -> Apps {
        Apps::new([
            AppConfig {
                name: "demo".into(),
                jwt_secret: Some(SECRET.into()),
                cross_app: vec!["shop".into()],
                ..Default::default()
            },
            AppConfig {
                name: "shop".into(),
                jwt_secret: Some("another-secret-of-length".into()),
                ..Default::default()
            },
            AppConfig {
                name: "other".into(),
                jwt_secret: Some("yet-another-secret-xx".into()),
                ..Default::default()
            },
        ])
        .unwrap()
    }

    #[test]
    fn good_tokens_verify() {
        let t = issue_token(SECRET, "demo", "alice", 60).unwrap();
        assert_eq!(apps().verify(&t).unwrap(), UserKey::new("demo", "alice"));
    }

    #[test]
    fn bad_tokens_get_their_kind() {
        let apps = apps();
        let wrong_key = issue_token("not-the-right-secret", "demo", "alice", 60).unwrap();
        assert!(matches!(
            apps.verify(&wrong_key),
            Err(LogicError::TokenInvalid(_))
        ));
        let claims = Claims {
            app: "demo".into(),
            sub: "alice".into(),
            exp: 1_000,
        };
        let expired = jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert!(matches!(
            apps.verify(&expired),
            Err(LogicError::TokenExpired)
        ));
        let unknown = issue_token(SECRET, "nope", "alice", 60).unwrap();
        assert!(matches!(
            apps.verify(&unknown),
            Err(LogicError::UnknownApp(_))
        ));
        assert!(matches!(
            apps.verify("garbage"),
            Err(LogicError::TokenInvalid(_))
        ));
        // A token of app "shop" signed with demo's secret does not pass.
        let wrong_app = issue_token(SECRET, "shop", "alice", 60).unwrap();
        assert!(matches!(
            apps.verify(&wrong_app),
            Err(LogicError::TokenInvalid(_))
        ));
    }

    /// An HS256 token of demo/alice with these extra claims.
    fn with_claims(extra: serde_json::Value) -> String {
        let mut claims = serde_json::json!({"app": "demo", "sub": "alice"});
        if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    fn now() -> f64 {
        jsonwebtoken::get_current_timestamp() as f64
    }

    fn demo_with(tweak: impl FnOnce(&mut AppConfig)) -> Apps {
        let mut c = AppConfig {
            name: "demo".into(),
            jwt_secret: Some(SECRET.into()),
            ..Default::default()
        };
        tweak(&mut c);
        Apps::new([c]).unwrap()
    }

    #[test]
    fn numeric_dates_follow_rfc_7519() {
        let apps = apps();
        // A NumericDate may have a fraction.
        let t = with_claims(serde_json::json!({"exp": now() + 60.5, "iat": now() - 0.25}));
        let v = apps.verify_token(&t).unwrap();
        assert_eq!(v.user, UserKey::new("demo", "alice"));
        assert_eq!(v.issued_at, Some(now() - 0.25));
        // A future nbf (past the leeway) is refused; a past one, or one within the leeway, is not.
        let t = with_claims(serde_json::json!({"exp": now() + 600.0, "nbf": now() + 300.0}));
        let err = apps.verify(&t).unwrap_err();
        assert!(
            matches!(&err, LogicError::TokenInvalid(m) if m.contains("nbf")),
            "{err}"
        );
        let t = with_claims(serde_json::json!({"exp": now() + 600.0, "nbf": now() + 10.5}));
        assert!(apps.verify(&t).is_ok());
        let t = with_claims(serde_json::json!({"exp": now() + 600.0, "nbf": now() - 10.0}));
        assert!(apps.verify(&t).is_ok());
        // exp within the leeway still passes; past it, TokenExpired.
        let t = with_claims(serde_json::json!({"exp": now() - 10.0}));
        assert!(apps.verify(&t).is_ok());
        let t = with_claims(serde_json::json!({"exp": now() - 100.0}));
        assert!(matches!(apps.verify(&t), Err(LogicError::TokenExpired)));
        // A NumericDate that is not a number is refused.
        let t = with_claims(serde_json::json!({"exp": "tomorrow"}));
        assert!(matches!(apps.verify(&t), Err(LogicError::TokenInvalid(_))));
    }

    #[test]
    fn exp_is_required_unless_the_app_opts_out() {
        let t = with_claims(serde_json::json!({}));
        let err = apps().verify(&t).unwrap_err();
        assert!(
            matches!(&err, LogicError::TokenInvalid(m) if m.contains("exp")),
            "{err}"
        );
        let optional = demo_with(|c| c.jwt_exp_optional = true);
        assert_eq!(optional.verify(&t).unwrap(), UserKey::new("demo", "alice"));
        // Opting out does not stop an exp that is there from being checked.
        let t = with_claims(serde_json::json!({"exp": now() - 100.0}));
        assert!(matches!(optional.verify(&t), Err(LogicError::TokenExpired)));
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let exp = now() + 60.0;
        let apps = demo_with(|c| {
            c.jwt_issuer = Some("https://shop.example".into());
            c.jwt_audience = Some("switchboard".into());
        });
        let good = with_claims(serde_json::json!({
            "exp": exp, "iss": "https://shop.example", "aud": ["other", "switchboard"]
        }));
        assert!(apps.verify(&good).is_ok());
        for bad in [
            serde_json::json!({"exp": exp, "aud": "switchboard"}),
            serde_json::json!({"exp": exp, "iss": "https://evil.example", "aud": "switchboard"}),
            serde_json::json!({"exp": exp, "iss": "https://shop.example"}),
            serde_json::json!({"exp": exp, "iss": "https://shop.example", "aud": "someone-else"}),
        ] {
            let t = with_claims(bad.clone());
            assert!(
                matches!(apps.verify(&t), Err(LogicError::TokenInvalid(_))),
                "{bad} passed"
            );
        }
        // Without the settings, iss is not looked at; an aud is refused (RFC 7519 4.1.3).
        let plain = demo_with(|_| {});
        let t = with_claims(serde_json::json!({"exp": exp, "iss": "anyone"}));
        assert!(plain.verify(&t).is_ok());
        let t = with_claims(serde_json::json!({"exp": exp, "aud": "switchboard"}));
        assert!(matches!(plain.verify(&t), Err(LogicError::TokenInvalid(_))));
    }

    #[test]
    fn issued_tokens_carry_iat() {
        let t = issue_token(SECRET, "demo", "alice", 60).unwrap();
        let iat = apps().verify_token(&t).unwrap().issued_at.unwrap();
        assert!((iat - now()).abs() <= 2.0, "iat {iat}");
    }

    fn refused(config: AppConfig) -> String {
        match Apps::new([config]) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        }
    }

    fn with_public_key(pem: &str) -> AppConfig {
        AppConfig {
            name: "shop".into(),
            jwt_public_key: Some(pem.into()),
            ..Default::default()
        }
    }

    #[test]
    fn key_configuration_is_checked_at_start() {
        let both = AppConfig {
            jwt_secret: Some(SECRET.into()),
            ..with_public_key(include_str!("../testdata/p256-public.pem"))
        };
        let msg = refused(both);
        assert!(
            msg.contains("app shop")
                && msg.contains("jwt_secret")
                && msg.contains("jwt_public_key"),
            "{msg}"
        );
        let msg = refused(with_public_key(include_str!("../testdata/p384-public.pem")));
        assert!(
            msg.contains("app shop") && msg.contains("jwt_public_key") && msg.contains("P-256"),
            "{msg}"
        );
        for private in [
            include_str!("../testdata/rsa-private-pkcs1.pem"),
            include_str!("../testdata/p256-private.pem"),
        ] {
            let msg = refused(with_public_key(private));
            assert!(
                msg.contains("app shop")
                    && msg.contains("jwt_public_key")
                    && msg.contains("PRIVATE"),
                "{msg}"
            );
        }
        // The right keys pass, and an ES256 token signed with the P-256 private key verifies.
        Apps::new([with_public_key(include_str!("../testdata/rsa-public.pem"))]).unwrap();
        let apps =
            Apps::new([with_public_key(include_str!("../testdata/p256-public.pem"))]).unwrap();
        let claims = serde_json::json!({"app": "shop", "sub": "bob", "exp": now() + 60.0});
        let t = jsonwebtoken::encode(
            &Header::new(Algorithm::ES256),
            &claims,
            &EncodingKey::from_ec_pem(include_bytes!("../testdata/p256-private.pem")).unwrap(),
        )
        .unwrap();
        assert_eq!(apps.verify(&t).unwrap(), UserKey::new("shop", "bob"));
    }

    #[test]
    fn cross_app_pairs() {
        let apps = apps();
        assert!(apps.may_message("demo", "demo"));
        assert!(apps.may_message("demo", "shop"));
        assert!(apps.may_message("shop", "demo"));
        assert!(!apps.may_message("demo", "other"));
    }
}
