//! Apps (account domains) and login tokens.
//!
//! A business server signs a JWT for each of its users: claims `app`, `sub`
//! (the uid) and `exp`, HS256 with the app's secret or RS256/ES256 with the
//! app's private key (Switchboard holds only the public key). The platform
//! never sees passwords.

use std::collections::HashMap;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

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
    /// Apps whose users this app's users may message (cross-domain chat).
    /// A pair is allowed when either side lists the other.
    pub cross_app: Vec<String>,
    /// Where the bus delivers this app's c2s reports and events (docs/bus.md).
    pub webhooks: Vec<crate::hooks::WebhookConfig>,
    /// A synchronous HTTP check of every c2c before it is stored.
    pub before_send: Option<crate::hooks::BeforeSendConfig>,
    /// The built-in sensitive-word filter, applied to UTF-8 c2c bodies.
    pub word_filter: Option<crate::hooks::WordFilterConfig>,
}

impl AppConfig {
    /// Whether some webhook of this app wants events of `topic` and type
    /// `kind`: events nobody subscribed to are not written to the outbox.
    pub fn wants_event(&self, topic: &str, kind: &str) -> bool {
        self.webhooks.iter().any(|w| w.matches(topic, kind))
    }
}

/// Claims of a login token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub app: String,
    pub sub: String,
    pub exp: u64,
}

struct CompiledApp {
    config: AppConfig,
    keys: Vec<(Algorithm, DecodingKey)>,
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
    pub fn new(configs: impl IntoIterator<Item = AppConfig>) -> Result<Apps, AppConfigError> {
        let mut apps = HashMap::new();
        for config in configs {
            let invalid = |reason: String| AppConfigError::Invalid {
                app: config.name.clone(),
                reason,
            };
            if config.name.is_empty() || config.name.len() > 64 {
                return Err(invalid("name must be 1 to 64 bytes".into()));
            }
            let mut keys = Vec::new();
            if let Some(secret) = &config.jwt_secret {
                if secret.len() < 16 {
                    return Err(invalid("jwt_secret must be at least 16 bytes".into()));
                }
                keys.push((
                    Algorithm::HS256,
                    DecodingKey::from_secret(secret.as_bytes()),
                ));
            }
            if let Some(pem) = &config.jwt_public_key {
                let mut parsed = false;
                if let Ok(k) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
                    keys.push((Algorithm::RS256, k));
                    parsed = true;
                }
                if let Ok(k) = DecodingKey::from_ec_pem(pem.as_bytes()) {
                    keys.push((Algorithm::ES256, k));
                    parsed = true;
                }
                if !parsed {
                    return Err(invalid(
                        "jwt_public_key is neither an RSA nor an EC public key in PEM".into(),
                    ));
                }
            }
            if keys.is_empty() {
                return Err(invalid("needs jwt_secret or jwt_public_key".into()));
            }
            if apps.contains_key(&config.name) {
                return Err(invalid("defined twice".into()));
            }
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
        // The app claim picks the key; it is trusted only after the signature checks.
        let unverified: Claims =
            jsonwebtoken::dangerous::insecure_decode_claims(token).map_err(|_| {
                LogicError::TokenInvalid("not a JWT with app, sub and exp claims".into())
            })?;
        let app = self
            .apps
            .get(&unverified.app)
            .ok_or_else(|| LogicError::UnknownApp(unverified.app.clone()))?;
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| LogicError::TokenInvalid(e.to_string()))?;
        let key = app
            .keys
            .iter()
            .find(|(alg, _)| *alg == header.alg)
            .map(|(_, k)| k)
            .ok_or_else(|| {
                LogicError::TokenInvalid(format!(
                    "algorithm {:?} is not configured for app {}",
                    header.alg, app.config.name
                ))
            })?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = 30;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| match e
            .kind()
        {
            ErrorKind::ExpiredSignature => LogicError::TokenExpired,
            _ => LogicError::TokenInvalid(e.to_string()),
        })?;
        let claims = data.claims;
        if claims.sub.is_empty() || claims.sub.len() > 128 {
            return Err(LogicError::TokenInvalid(
                "sub must be 1 to 128 bytes".into(),
            ));
        }
        Ok(UserKey::new(claims.app, claims.sub))
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

/// Signs an HS256 login token (for `switchboard token` and tests).
pub fn issue_token(
    secret: &str,
    app: &str,
    uid: &str,
    ttl_secs: u64,
) -> Result<String, LogicError> {
    let claims = Claims {
        app: app.into(),
        sub: uid.into(),
        exp: jsonwebtoken::get_current_timestamp() + ttl_secs,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| LogicError::Internal(e.to_string()))
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

    #[test]
    fn cross_app_pairs() {
        let apps = apps();
        assert!(apps.may_message("demo", "demo"));
        assert!(apps.may_message("demo", "shop"));
        assert!(apps.may_message("shop", "demo"));
        assert!(!apps.may_message("demo", "other"));
    }
}
