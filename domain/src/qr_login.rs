//! The QR-login aggregate: one stream per QR code, from minting to a redeemed web session.
//!
//! A web page mints a code and gets, with it, a browser secret (a cookie it never puts in a
//! URL). A logged-in phone app scans the code, locks it and confirms or cancels. The page then
//! redeems a one-time login code, which only the minting browser can compute and present, for a
//! session. So the QR content alone never logs anyone in: a screenshot of it in another browser
//! has no secret and polls to nothing.
//!
//! Only hashes of the code and the secret are stored in events: the log can be read by auditors
//! without handing them anything that acts. States never go backwards, and expiry is decided
//! from the command's own time (an injected clock), so a code is refused the moment it is due
//! even before the sweeper records `QrCodeExpired`.

use crate::device::ParseError;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use uuid::Uuid;

/// Longest `ext` an app may attach when locking (the seed's free-form extension field).
pub const MAX_EXT_LEN: usize = 512;
/// How long a confirmed login may wait for the browser to redeem it.
pub const REDEEM_WINDOW: Duration = Duration::seconds(60);
const TOKEN_PREFIX: &str = "lq1_";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LoginId(Uuid);

impl LoginId {
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl From<Uuid> for LoginId {
    fn from(id: Uuid) -> Self {
        Self(id)
    }
}

impl fmt::Display for LoginId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn random_32() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

/// What the QR code carries: `lq1_` + base64url(login id (16 bytes) || 128 random bits).
///
/// The login id lets a command find its stream without a lookup table; the random half is what
/// makes the code unguessable, and only its hash is stored.
#[derive(Clone, PartialEq, Eq)]
pub struct QrToken {
    login_id: LoginId,
    raw: String,
}

impl fmt::Debug for QrToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QrToken({}, ..)", self.login_id)
    }
}

impl QrToken {
    pub fn mint(login_id: LoginId) -> Self {
        let mut bytes = [0u8; 32];
        bytes[..16].copy_from_slice(login_id.as_uuid().as_bytes());
        rand::rng().fill_bytes(&mut bytes[16..]);
        Self {
            login_id,
            raw: format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)),
        }
    }

    pub fn parse(field: &str, raw: &str) -> Result<Self, ParseError> {
        let bad = || ParseError::new(field, "is not a Latch QR login code (lq1_...)");
        let body = raw.trim().strip_prefix(TOKEN_PREFIX).ok_or_else(bad)?;
        if body.len() != 43 {
            return Err(bad());
        }
        let bytes = URL_SAFE_NO_PAD.decode(body).map_err(|_| bad())?;
        let id = Uuid::from_slice(&bytes[..16]).map_err(|_| bad())?;
        if id.get_version_num() != 7 {
            return Err(bad());
        }
        Ok(Self {
            login_id: LoginId(id),
            raw: raw.trim().to_owned(),
        })
    }

    pub fn login_id(&self) -> LoginId {
        self.login_id
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    pub fn hash(&self) -> String {
        sha256_hex(self.raw.as_bytes())
    }
}

/// The minting browser's secret, carried in its cookie as `<login id>.<base64url 256 bits>`.
#[derive(Clone, PartialEq, Eq)]
pub struct BrowserSecret {
    login_id: LoginId,
    secret: [u8; 32],
}

impl fmt::Debug for BrowserSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BrowserSecret({}, ..)", self.login_id)
    }
}

impl BrowserSecret {
    pub fn mint(login_id: LoginId) -> Self {
        Self {
            login_id,
            secret: random_32(),
        }
    }

    pub fn parse(field: &str, raw: &str) -> Result<Self, ParseError> {
        let bad = || ParseError::new(field, "is not a QR login browser secret");
        let (id, secret) = raw.split_once('.').ok_or_else(bad)?;
        let id = Uuid::parse_str(id).map_err(|_| bad())?;
        let secret: [u8; 32] = URL_SAFE_NO_PAD
            .decode(secret)
            .map_err(|_| bad())?
            .try_into()
            .map_err(|_| bad())?;
        Ok(Self {
            login_id: LoginId(id),
            secret,
        })
    }

    pub fn login_id(&self) -> LoginId {
        self.login_id
    }

    /// The cookie value.
    pub fn encode(&self) -> String {
        format!("{}.{}", self.login_id, URL_SAFE_NO_PAD.encode(self.secret))
    }

    pub fn hash(&self) -> String {
        sha256_hex(&self.secret)
    }

    /// The one-time login code for this login: derived from the secret, so only the minting
    /// browser can present it, and never stored anywhere.
    pub fn login_code(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"latch qr login code v1\0");
        h.update(self.secret);
        h.update(self.login_id.as_uuid().as_bytes());
        URL_SAFE_NO_PAD.encode(h.finalize())
    }
}

/// Where a login request comes from, shown on the phone before the user confirms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginOrigin {
    pub ip: String,
    pub user_agent: String,
}

/// The app's free-form extension, handed to the page on success (seed field `ext`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Ext(String);

impl Ext {
    pub fn parse(field: &str, raw: &str) -> Result<Self, ParseError> {
        if raw.len() > MAX_EXT_LEN {
            return Err(ParseError::new(
                field,
                format!("may be at most {MAX_EXT_LEN} bytes"),
            ));
        }
        if raw
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t')
        {
            return Err(ParseError::new(
                field,
                "must not contain control characters",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum QrLoginCommand {
    Mint {
        login_id: LoginId,
        token_hash: String,
        secret_hash: String,
        origin: LoginOrigin,
        at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    },
    Lock {
        token_hash: String,
        user: String,
        ext: Option<Ext>,
        at: DateTime<Utc>,
    },
    Confirm {
        token_hash: String,
        user: String,
        at: DateTime<Utc>,
    },
    Cancel {
        token_hash: String,
        user: String,
        at: DateTime<Utc>,
    },
    Expire {
        at: DateTime<Utc>,
    },
    Redeem {
        secret_hash: String,
        /// The id of the session token the redemption issues.
        session_id: Uuid,
        session_expires_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
}

impl QrLoginCommand {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Mint { .. } => "MintQrCode",
            Self::Lock { .. } => "LockQrCode",
            Self::Confirm { .. } => "ConfirmQrLogin",
            Self::Cancel { .. } => "CancelQrLogin",
            Self::Expire { .. } => "ExpireQrCode",
            Self::Redeem { .. } => "RedeemQrLogin",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum QrLoginEvent {
    QrCodeMinted {
        login_id: LoginId,
        token_hash: String,
        secret_hash: String,
        origin: LoginOrigin,
        at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    },
    /// The seed's "scanned": an app user locked the code to themselves.
    QrCodeLocked {
        user: String,
        ext: Option<Ext>,
        at: DateTime<Utc>,
    },
    QrLoginConfirmed {
        user: String,
        at: DateTime<Utc>,
        redeem_by: DateTime<Utc>,
    },
    QrLoginCancelled {
        user: String,
        at: DateTime<Utc>,
    },
    QrCodeExpired {
        at: DateTime<Utc>,
    },
    /// The redemption is also the issue of the web session's token: `session_id` is its token
    /// id (role user, subject `user`), so the redeem request stays one command.
    QrLoginRedeemed {
        user: String,
        session_id: Uuid,
        /// When the session token stops working. Absent in redemptions recorded before the
        /// token was named here (the field is optional, so those still read at version 1).
        #[serde(default)]
        session_expires_at: Option<DateTime<Utc>>,
        at: DateTime<Utc>,
    },
}

impl QrLoginEvent {
    pub const VERSION: &'static str = "1";
    pub const TYPES: [&'static str; 6] = [
        "QrCodeMinted",
        "QrCodeLocked",
        "QrLoginConfirmed",
        "QrLoginCancelled",
        "QrCodeExpired",
        "QrLoginRedeemed",
    ];

    pub fn at(&self) -> DateTime<Utc> {
        match self {
            Self::QrCodeMinted { at, .. }
            | Self::QrCodeLocked { at, .. }
            | Self::QrLoginConfirmed { at, .. }
            | Self::QrLoginCancelled { at, .. }
            | Self::QrCodeExpired { at }
            | Self::QrLoginRedeemed { at, .. } => *at,
        }
    }
}

impl DomainEvent for QrLoginEvent {
    fn event_type(&self) -> String {
        match self {
            Self::QrCodeMinted { .. } => "QrCodeMinted",
            Self::QrCodeLocked { .. } => "QrCodeLocked",
            Self::QrLoginConfirmed { .. } => "QrLoginConfirmed",
            Self::QrLoginCancelled { .. } => "QrLoginCancelled",
            Self::QrCodeExpired { .. } => "QrCodeExpired",
            Self::QrLoginRedeemed { .. } => "QrLoginRedeemed",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        Self::VERSION.to_owned()
    }
}

/// Why a QR-login command was refused. Each has a stable code for API clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QrLoginError {
    #[error("no such QR login code")]
    UnknownCode,
    #[error("this code was already minted")]
    AlreadyMinted,
    #[error("the QR code has expired; get a new one")]
    Expired,
    #[error("the login was cancelled on the phone; the code cannot be used again")]
    Cancelled,
    #[error("the login was already completed with this code")]
    AlreadyRedeemed,
    #[error("another app user has already scanned this code")]
    AlreadyLocked,
    #[error("scan (lock) the code before confirming or cancelling it")]
    NotLocked,
    #[error("only the app user who scanned this code may confirm or cancel it")]
    NotLockOwner,
    #[error("the login was already confirmed")]
    AlreadyConfirmed,
    #[error("the login has not been confirmed on the phone")]
    NotConfirmed,
    #[error("this login belongs to another browser")]
    WrongBrowser,
    #[error("the code is not due to expire yet")]
    NotDue,
}

impl QrLoginError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownCode => "unknown_code",
            Self::AlreadyMinted => "already_minted",
            Self::Expired => "code_expired",
            Self::Cancelled => "code_cancelled",
            Self::AlreadyRedeemed => "login_code_used",
            Self::AlreadyLocked => "already_locked",
            Self::NotLocked => "not_locked",
            Self::NotLockOwner => "not_lock_owner",
            Self::AlreadyConfirmed => "already_confirmed",
            Self::NotConfirmed => "not_confirmed",
            Self::WrongBrowser => "wrong_browser",
            Self::NotDue => "not_due",
        }
    }

    /// The seed's answer for a refusal: -2 "the code is no longer valid", -1 anything else.
    pub fn statusflag(&self) -> i8 {
        match self {
            Self::Expired | Self::Cancelled | Self::AlreadyRedeemed => -2,
            _ => -1,
        }
    }
}

/// Where a login stands. Only ever moves forward: Waiting -> Scanned -> Confirmed -> Redeemed,
/// with Cancelled and Expired as the two dead ends.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub enum Stage {
    #[default]
    Unminted,
    Waiting,
    Scanned {
        user: String,
        ext: Option<Ext>,
    },
    Confirmed {
        user: String,
        ext: Option<Ext>,
        redeem_by: DateTime<Utc>,
    },
    Cancelled,
    Expired,
    Redeemed {
        user: String,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QrLogin {
    pub stage: Stage,
    pub token_hash: String,
    pub secret_hash: String,
    pub origin: Option<LoginOrigin>,
    pub minted_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// What the page is told (seed `statusflag`), with the state name that tells -2 apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageStatus {
    Unknown,
    Waiting,
    Scanned,
    Confirmed,
    Expired,
    Cancelled,
    Redeemed,
}

impl PageStatus {
    pub fn statusflag(&self) -> i8 {
        match self {
            Self::Waiting => 0,
            Self::Scanned => 1,
            Self::Confirmed => 2,
            Self::Expired | Self::Cancelled | Self::Redeemed => -2,
            Self::Unknown => -1,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Waiting => "waiting",
            Self::Scanned => "scanned",
            Self::Confirmed => "confirmed",
            Self::Expired => "expired",
            Self::Cancelled => "cancelled",
            Self::Redeemed => "redeemed",
        }
    }

    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Self::Expired | Self::Cancelled | Self::Redeemed | Self::Unknown
        )
    }
}

impl crate::store::StateShape for QrLogin {}

impl Aggregate for QrLogin {
    const TYPE: &'static str = "qr_login";
    type Command = QrLoginCommand;
    type Event = QrLoginEvent;
    type Error = QrLoginError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        use QrLoginEvent as E;
        match event {
            E::QrCodeMinted {
                token_hash,
                secret_hash,
                origin,
                at,
                expires_at,
                ..
            } => {
                self.stage = Stage::Waiting;
                self.token_hash = token_hash;
                self.secret_hash = secret_hash;
                self.origin = Some(origin);
                self.minted_at = Some(at);
                self.expires_at = Some(expires_at);
            }
            E::QrCodeLocked { user, ext, .. } => self.stage = Stage::Scanned { user, ext },
            E::QrLoginConfirmed {
                user, redeem_by, ..
            } => {
                let ext = match &self.stage {
                    Stage::Scanned { ext, .. } => ext.clone(),
                    _ => None,
                };
                self.stage = Stage::Confirmed {
                    user,
                    ext,
                    redeem_by,
                };
            }
            E::QrLoginCancelled { .. } => self.stage = Stage::Cancelled,
            E::QrCodeExpired { .. } => self.stage = Stage::Expired,
            E::QrLoginRedeemed { user, .. } => self.stage = Stage::Redeemed { user },
        }
    }
}

impl QrLogin {
    /// The whole decision, synchronous and pure. An empty list means the command is already
    /// satisfied (an app repeating its own lock or confirmation).
    pub fn decide(&self, command: QrLoginCommand) -> Result<Vec<QrLoginEvent>, QrLoginError> {
        use QrLoginCommand as C;
        use QrLoginError as Err;
        use QrLoginEvent as E;
        if let C::Mint {
            login_id,
            token_hash,
            secret_hash,
            origin,
            at,
            expires_at,
        } = command
        {
            if self.stage != Stage::Unminted {
                return Err(Err::AlreadyMinted);
            }
            return Ok(vec![E::QrCodeMinted {
                login_id,
                token_hash,
                secret_hash,
                origin,
                at,
                expires_at,
            }]);
        }
        if self.stage == Stage::Unminted {
            return Err(Err::UnknownCode);
        }
        match command {
            C::Mint { .. } => unreachable!("handled above"),
            C::Lock {
                token_hash,
                user,
                ext,
                at,
            } => {
                self.check_token(&token_hash)?;
                self.check_alive(at)?;
                match &self.stage {
                    Stage::Waiting => Ok(vec![E::QrCodeLocked { user, ext, at }]),
                    Stage::Scanned { user: holder, .. } if *holder == user => Ok(vec![]),
                    Stage::Scanned { .. } => Err(Err::AlreadyLocked),
                    Stage::Confirmed { .. } => Err(Err::AlreadyConfirmed),
                    _ => unreachable!("check_alive refuses dead stages"),
                }
            }
            C::Confirm {
                token_hash,
                user,
                at,
            } => {
                self.check_token(&token_hash)?;
                self.check_alive(at)?;
                match &self.stage {
                    Stage::Waiting => Err(Err::NotLocked),
                    Stage::Scanned { user: holder, .. } if *holder == user => {
                        Ok(vec![E::QrLoginConfirmed {
                            user,
                            at,
                            redeem_by: at + REDEEM_WINDOW,
                        }])
                    }
                    Stage::Confirmed { user: holder, .. } if *holder == user => Ok(vec![]),
                    _ => Err(Err::NotLockOwner),
                }
            }
            C::Cancel {
                token_hash,
                user,
                at,
            } => {
                self.check_token(&token_hash)?;
                self.check_alive(at)?;
                match &self.stage {
                    Stage::Waiting => Err(Err::NotLocked),
                    Stage::Scanned { user: holder, .. } if *holder == user => {
                        Ok(vec![E::QrLoginCancelled { user, at }])
                    }
                    Stage::Confirmed { user: holder, .. } if *holder == user => {
                        Err(Err::AlreadyConfirmed)
                    }
                    _ => Err(Err::NotLockOwner),
                }
            }
            C::Expire { at } => match &self.stage {
                Stage::Waiting | Stage::Scanned { .. } | Stage::Confirmed { .. }
                    if self.due(at) =>
                {
                    Ok(vec![E::QrCodeExpired { at }])
                }
                Stage::Waiting | Stage::Scanned { .. } | Stage::Confirmed { .. } => {
                    Err(Err::NotDue)
                }
                // Already over, one way or another: nothing to record.
                _ => Ok(vec![]),
            },
            C::Redeem {
                secret_hash,
                session_id,
                session_expires_at,
                at,
            } => {
                if secret_hash != self.secret_hash {
                    return Err(Err::WrongBrowser);
                }
                self.check_alive(at)?;
                match &self.stage {
                    Stage::Confirmed { user, .. } => Ok(vec![E::QrLoginRedeemed {
                        user: user.clone(),
                        session_id,
                        session_expires_at: Some(session_expires_at),
                        at,
                    }]),
                    _ => Err(Err::NotConfirmed),
                }
            }
        }
    }

    fn check_token(&self, token_hash: &str) -> Result<(), QrLoginError> {
        // A wrong random half is indistinguishable from a code that never existed.
        if token_hash == self.token_hash {
            Ok(())
        } else {
            Err(QrLoginError::UnknownCode)
        }
    }

    /// Refuses anything on a login that is over, or due to be over at `at`.
    fn check_alive(&self, at: DateTime<Utc>) -> Result<(), QrLoginError> {
        match self.stage {
            Stage::Cancelled => Err(QrLoginError::Cancelled),
            Stage::Expired => Err(QrLoginError::Expired),
            Stage::Redeemed { .. } => Err(QrLoginError::AlreadyRedeemed),
            _ if self.due(at) => Err(QrLoginError::Expired),
            _ => Ok(()),
        }
    }

    /// Whether the live stage's deadline has passed: the code's for waiting and scanned, the
    /// redeem window's once confirmed.
    fn due(&self, at: DateTime<Utc>) -> bool {
        match &self.stage {
            Stage::Confirmed { redeem_by, .. } => at >= *redeem_by,
            Stage::Waiting | Stage::Scanned { .. } => self.expires_at.is_some_and(|e| at >= e),
            _ => false,
        }
    }

    /// The deadline of the current live stage, if any.
    pub fn deadline(&self) -> Option<DateTime<Utc>> {
        match &self.stage {
            Stage::Confirmed { redeem_by, .. } => Some(*redeem_by),
            Stage::Waiting | Stage::Scanned { .. } => self.expires_at,
            _ => None,
        }
    }

    /// What the page sees at `now`: a due deadline reads as expired before the event exists.
    pub fn page_status(&self, now: DateTime<Utc>) -> PageStatus {
        match &self.stage {
            Stage::Unminted => PageStatus::Unknown,
            Stage::Cancelled => PageStatus::Cancelled,
            Stage::Expired => PageStatus::Expired,
            Stage::Redeemed { .. } => PageStatus::Redeemed,
            _ if self.due(now) => PageStatus::Expired,
            Stage::Waiting => PageStatus::Waiting,
            Stage::Scanned { .. } => PageStatus::Scanned,
            Stage::Confirmed { .. } => PageStatus::Confirmed,
        }
    }

    /// The `ext` the locking app attached, once the login is confirmed.
    pub fn ext(&self) -> Option<&Ext> {
        match &self.stage {
            Stage::Scanned { ext, .. } | Stage::Confirmed { ext, .. } => ext.as_ref(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 21, 8, 0, 0).unwrap()
    }

    struct Given {
        login: QrLogin,
        token: QrToken,
        secret: BrowserSecret,
    }

    /// Given the events produced by `commands` (each must succeed)...
    fn given(steps: &[&dyn Fn(&Given) -> QrLoginCommand]) -> Given {
        let id = LoginId::generate();
        let token = QrToken::mint(id);
        let secret = BrowserSecret::mint(id);
        let mut g = Given {
            login: QrLogin::default(),
            token,
            secret,
        };
        let mint = QrLoginCommand::Mint {
            login_id: id,
            token_hash: g.token.hash(),
            secret_hash: g.secret.hash(),
            origin: LoginOrigin {
                ip: "203.0.113.9".into(),
                user_agent: "Mozilla/5.0 Chrome/156".into(),
            },
            at: t0(),
            expires_at: t0() + Duration::seconds(120),
        };
        for event in g.login.decide(mint).unwrap() {
            g.login.apply(event);
        }
        for step in steps {
            let command = step(&g);
            for event in g.login.decide(command).unwrap() {
                g.login.apply(event);
            }
        }
        g
    }

    fn lock(user: &'static str, secs: i64) -> impl Fn(&Given) -> QrLoginCommand {
        move |g| QrLoginCommand::Lock {
            token_hash: g.token.hash(),
            user: user.into(),
            ext: Some(Ext::parse("ext", "device=phone-7").unwrap()),
            at: t0() + Duration::seconds(secs),
        }
    }

    fn confirm(user: &'static str, secs: i64) -> impl Fn(&Given) -> QrLoginCommand {
        move |g| QrLoginCommand::Confirm {
            token_hash: g.token.hash(),
            user: user.into(),
            at: t0() + Duration::seconds(secs),
        }
    }

    fn cancel(user: &'static str, secs: i64) -> impl Fn(&Given) -> QrLoginCommand {
        move |g| QrLoginCommand::Cancel {
            token_hash: g.token.hash(),
            user: user.into(),
            at: t0() + Duration::seconds(secs),
        }
    }

    fn redeem(secs: i64) -> impl Fn(&Given) -> QrLoginCommand {
        move |g| QrLoginCommand::Redeem {
            secret_hash: g.secret.hash(),
            session_id: Uuid::nil(),
            session_expires_at: t0() + Duration::hours(12),
            at: t0() + Duration::seconds(secs),
        }
    }

    fn when(
        g: &Given,
        step: impl Fn(&Given) -> QrLoginCommand,
    ) -> Result<Vec<QrLoginEvent>, QrLoginError> {
        g.login.decide(step(g))
    }

    #[test]
    fn tokens_round_trip_and_refuse_garbage() {
        let id = LoginId::generate();
        let token = QrToken::mint(id);
        let parsed = QrToken::parse("code", token.as_str()).unwrap();
        assert_eq!(parsed.login_id(), id);
        assert_eq!(parsed.hash(), token.hash());
        for bad in [
            "",
            "lq1_",
            "lq1_short",
            "xx1_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            &format!("{}A", token.as_str()),
            "lq1_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            let err = QrToken::parse("code", bad).unwrap_err();
            assert_eq!(err.field, "code", "{bad}");
        }
        let secret = BrowserSecret::mint(id);
        let back = BrowserSecret::parse("cookie", &secret.encode()).unwrap();
        assert_eq!(back.hash(), secret.hash());
        assert_eq!(back.login_code(), secret.login_code());
        assert_ne!(secret.login_code(), BrowserSecret::mint(id).login_code());
        assert!(BrowserSecret::parse("cookie", "nope").is_err());
        assert!(BrowserSecret::parse("cookie", &format!("{id}.AAAA")).is_err());
    }

    #[test]
    fn ext_is_bounded() {
        assert!(Ext::parse("ext", &"x".repeat(MAX_EXT_LEN)).is_ok());
        assert_eq!(
            Ext::parse("ext", &"x".repeat(MAX_EXT_LEN + 1))
                .unwrap_err()
                .field,
            "ext"
        );
        assert!(Ext::parse("ext", "a\u{0}b").is_err());
    }

    #[test]
    fn minting_twice_is_refused() {
        let g = given(&[]);
        let again = QrLoginCommand::Mint {
            login_id: g.token.login_id(),
            token_hash: g.token.hash(),
            secret_hash: g.secret.hash(),
            origin: g.login.origin.clone().unwrap(),
            at: t0(),
            expires_at: t0(),
        };
        assert_eq!(g.login.decide(again), Err(QrLoginError::AlreadyMinted));
        assert_eq!(g.login.page_status(t0()), PageStatus::Waiting);
    }

    #[test]
    fn unknown_login_refuses_everything() {
        let login = QrLogin::default();
        let lock = QrLoginCommand::Lock {
            token_hash: "x".into(),
            user: "u".into(),
            ext: None,
            at: t0(),
        };
        assert_eq!(login.decide(lock), Err(QrLoginError::UnknownCode));
        assert_eq!(login.page_status(t0()), PageStatus::Unknown);
    }

    #[test]
    fn lock_scans_the_code_once() {
        let g = given(&[]);
        let events = when(&g, lock("alice", 5)).unwrap();
        assert!(
            matches!(&events[..], [QrLoginEvent::QrCodeLocked { user, .. }] if user == "alice")
        );
        let g = given(&[&lock("alice", 5)]);
        assert_eq!(g.login.page_status(t0()), PageStatus::Scanned);
        // The same app repeating itself changes nothing; another app is refused.
        assert_eq!(when(&g, lock("alice", 6)), Ok(vec![]));
        assert_eq!(
            when(&g, lock("mallory", 6)),
            Err(QrLoginError::AlreadyLocked)
        );
    }

    #[test]
    fn lock_with_a_wrong_token_is_unknown() {
        let g = given(&[]);
        let forged = QrLoginCommand::Lock {
            token_hash: QrToken::mint(g.token.login_id()).hash(),
            user: "alice".into(),
            ext: None,
            at: t0(),
        };
        assert_eq!(g.login.decide(forged), Err(QrLoginError::UnknownCode));
    }

    #[test]
    fn lock_after_expiry_is_refused_before_the_event() {
        let g = given(&[]);
        assert_eq!(when(&g, lock("alice", 120)), Err(QrLoginError::Expired));
        assert_eq!(
            g.login.page_status(t0() + Duration::seconds(120)),
            PageStatus::Expired
        );
        assert_eq!(
            g.login.page_status(t0() + Duration::seconds(119)),
            PageStatus::Waiting
        );
    }

    #[test]
    fn confirm_needs_the_lock_and_its_owner() {
        let g = given(&[]);
        assert_eq!(when(&g, confirm("alice", 5)), Err(QrLoginError::NotLocked));
        let g = given(&[&lock("alice", 5)]);
        assert_eq!(
            when(&g, confirm("mallory", 6)),
            Err(QrLoginError::NotLockOwner)
        );
        let events = when(&g, confirm("alice", 6)).unwrap();
        assert!(
            matches!(&events[..], [QrLoginEvent::QrLoginConfirmed { redeem_by, .. }]
            if *redeem_by == t0() + Duration::seconds(6) + REDEEM_WINDOW)
        );
        let g = given(&[&lock("alice", 5), &confirm("alice", 6)]);
        assert_eq!(g.login.page_status(t0()), PageStatus::Confirmed);
        assert_eq!(g.login.ext().map(Ext::as_str), Some("device=phone-7"));
        assert_eq!(when(&g, confirm("alice", 7)), Ok(vec![]));
        // Confirmed never goes back: no lock, no cancel.
        assert_eq!(
            when(&g, lock("alice", 7)),
            Err(QrLoginError::AlreadyConfirmed)
        );
        assert_eq!(
            when(&g, lock("bob", 7)),
            Err(QrLoginError::AlreadyConfirmed)
        );
        assert_eq!(
            when(&g, cancel("alice", 7)),
            Err(QrLoginError::AlreadyConfirmed)
        );
    }

    #[test]
    fn cancel_ends_the_code_for_good() {
        let g = given(&[]);
        assert_eq!(when(&g, cancel("alice", 5)), Err(QrLoginError::NotLocked));
        let g = given(&[&lock("alice", 5)]);
        assert_eq!(when(&g, cancel("bob", 6)), Err(QrLoginError::NotLockOwner));
        let g = given(&[&lock("alice", 5), &cancel("alice", 6)]);
        assert_eq!(g.login.page_status(t0()), PageStatus::Cancelled);
        assert_eq!(when(&g, cancel("alice", 7)), Err(QrLoginError::Cancelled));
        assert_eq!(when(&g, lock("alice", 7)), Err(QrLoginError::Cancelled));
        assert_eq!(when(&g, confirm("alice", 7)), Err(QrLoginError::Cancelled));
        // Cancelled and expired are different facts: the sweeper records nothing over a cancel.
        assert_eq!(
            g.login.decide(QrLoginCommand::Expire {
                at: t0() + Duration::hours(1)
            }),
            Ok(vec![])
        );
    }

    #[test]
    fn expire_only_when_due() {
        let g = given(&[&lock("alice", 5)]);
        assert_eq!(
            g.login.decide(QrLoginCommand::Expire {
                at: t0() + Duration::seconds(119)
            }),
            Err(QrLoginError::NotDue)
        );
        let at = t0() + Duration::seconds(120);
        assert_eq!(
            g.login.decide(QrLoginCommand::Expire { at }),
            Ok(vec![QrLoginEvent::QrCodeExpired { at }])
        );
        let g = given(&[&lock("alice", 5), &confirm("alice", 6)]);
        // Confirmed has its own window to be redeemed in, past the code's own expiry.
        let redeem_by = t0() + Duration::seconds(6) + REDEEM_WINDOW;
        assert_eq!(
            g.login.decide(QrLoginCommand::Expire {
                at: redeem_by - Duration::seconds(1)
            }),
            Err(QrLoginError::NotDue)
        );
        assert!(g
            .login
            .decide(QrLoginCommand::Expire { at: redeem_by })
            .is_ok());
    }

    #[test]
    fn redeem_once_with_the_minting_browsers_secret() {
        let g = given(&[&lock("alice", 5)]);
        assert_eq!(when(&g, redeem(7)), Err(QrLoginError::NotConfirmed));
        let g = given(&[&lock("alice", 5), &confirm("alice", 6)]);
        let stranger = QrLoginCommand::Redeem {
            secret_hash: BrowserSecret::mint(g.token.login_id()).hash(),
            session_id: Uuid::nil(),
            session_expires_at: t0() + Duration::hours(12),
            at: t0() + Duration::seconds(7),
        };
        assert_eq!(g.login.decide(stranger), Err(QrLoginError::WrongBrowser));
        assert_eq!(when(&g, redeem(6 + 60)), Err(QrLoginError::Expired));
        let events = when(&g, redeem(7)).unwrap();
        assert!(
            matches!(&events[..], [QrLoginEvent::QrLoginRedeemed { user, .. }] if user == "alice")
        );
        let g = given(&[&lock("alice", 5), &confirm("alice", 6), &redeem(7)]);
        assert_eq!(when(&g, redeem(8)), Err(QrLoginError::AlreadyRedeemed));
        assert_eq!(g.login.page_status(t0()), PageStatus::Redeemed);
        assert_eq!(QrLoginError::AlreadyRedeemed.statusflag(), -2);
    }

    #[test]
    fn a_redemption_recorded_before_session_expiry_was_named_still_reads() {
        let old = serde_json::json!({"QrLoginRedeemed": {"user": "alice",
            "session_id": "0195f0c2-0000-7000-8000-000000000001", "at": "2026-01-01T00:00:00Z"}});
        match serde_json::from_value::<QrLoginEvent>(old).unwrap() {
            QrLoginEvent::QrLoginRedeemed {
                session_expires_at, ..
            } => assert_eq!(session_expires_at, None),
            other => panic!("{other:?}"),
        }
    }
}
