//! Who was let in: API tokens issued and revoked, and locker users' password logins.
//!
//! The `api_tokens` table stays the credential store requests are authenticated against (it
//! holds only a SHA-256 of each token, like a secrets table); these aggregates record the facts
//! about those credentials for auditors. No event here carries a token, a token's hash, a
//! password or a password hash: a token is named by its token id (a UUIDv7 chosen when it is
//! issued, also stored beside its hash), which cannot log anyone in.
//!
//! - [`token`]: one `api_token` stream per token id: `TokenIssued` (when the issue is not
//!   already told by another fact, see below) and `TokenRevoked`.
//! - [`login`]: one `locker_login` stream per password login attempt: `LockerLoginSucceeded`
//!   (carrying the issued token's id, role, subject and expiry, so a login is one append) or
//!   `LockerLoginRefused` with the reason.
//!
//! Where a token comes out of another fact, that fact carries the token id and the token stream
//! starts at its revocation: a locker login (`LockerLoginSucceeded`, stream id = token id), a
//! QR-login redemption (`QrLoginRedeemed.session_id` is the token id) and a shopper's Kazaya
//! login (`MemberAuthorized.session`). This keeps one request to one command.

pub mod login;
pub mod token;

pub use login::{LockerLogin, LoginCommand, LoginError, LoginEvent, LoginRefusal};
pub use token::{
    ApiToken, RevokeReason, Subject, TokenCommand, TokenError, TokenEvent, TokenRole, TokenVia,
};
