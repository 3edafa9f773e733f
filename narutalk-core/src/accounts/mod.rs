//! Accounts: registration, login, profiles, password changes, the dashboard, and the
//! administrators' operations (`docs/API.md`, Accounts).
//!
//! Every rule of the API about users lives here: the field checks with their exact
//! messages, argon2id hashing, the enumeration-safe login, device tokens (`devices`), and
//! revocation of every token on a password change, reset, deactivation or "log out
//! everywhere". Hashing always runs outside the writer lock, so a flood of logins never
//! holds up other writes.
//!
//! A login is two steps, so that a server can throttle between them (`docs/API.md`,
//! Login throttling): [`LoginInput::from_fields`] checks the body's fields, then
//! [`Accounts::login_with`] hashes. [`Accounts::trusted_device`] says whether the body's
//! device token may stand in for the account's failure budget. [`Accounts::login_fields`]
//! does all three at once, with no budget, for embedders.

pub mod devices;
pub mod password;
pub mod policy;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{Error, FieldErrors};
use crate::events::{Actor, Event, EventBus, Origin, Revocation};
use crate::fields::{Checked, FieldReader, JsonObject, Text};
use crate::store::{
    AccountStore, Audit, Credentials, LoginRecord, NewAccount, ProfileChange, Taken, UserChange,
};
use crate::time;
use crate::tokens::{TokenKeys, TokenPair};
use devices::Device;

/// `user with this email already exists.`
pub const EMAIL_TAKEN: &str = "user with this email already exists.";
/// `A user with that username already exists.`
pub const USERNAME_TAKEN: &str = "A user with that username already exists.";
/// `Passwords do not match.`
pub const PASSWORDS_DIFFER: &str = "Passwords do not match.";
/// `Your old password was entered incorrectly. Please enter it again.`
pub const OLD_PASSWORD_WRONG: &str =
    "Your old password was entered incorrectly. Please enter it again.";
/// The longest email accepted, in characters.
pub const EMAIL_MAX_CHARS: usize = 254;
/// The longest username accepted, in characters.
pub const USERNAME_MAX_CHARS: usize = 150;
/// The longest department accepted, in characters.
pub const DEPARTMENT_MAX_CHARS: usize = 100;

/// How long "recent" is for the dashboard's `recent_chats`.
pub const RECENT_CHATS_WINDOW: chrono::Duration = chrono::Duration::days(7);

/// A user's id: an integer, never reused after the user is deleted. Serializes as the
/// integer (the CLI's JSON).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct UserId(pub i64);

impl std::fmt::Display for UserId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// What a user is. Recorded and shown; in v1 it gates nothing in the API. Serializes as
/// its name (the CLI's JSON).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Made only with the CLI, never through registration.
    Admin,
    /// Hospital doctor.
    Doctor,
    /// Hospital nurse.
    Nurse,
    /// Anyone else (the default).
    User,
}

impl Role {
    /// Every role, in the API's order.
    pub const ALL: [Role; 4] = [Role::Admin, Role::Doctor, Role::Nurse, Role::User];

    /// The stored and shown name: `admin`, `doctor`, `nurse` or `user`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Doctor => "doctor",
            Role::Nurse => "nurse",
            Role::User => "user",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = UnknownChoice;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or(UnknownChoice)
    }
}

/// A string that is not one of a field's choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownChoice;

/// A role open to self-registration: anything but `admin`.
struct RegistrationRole(Role);

impl std::str::FromStr for RegistrationRole {
    type Err = UnknownChoice;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.parse()? {
            Role::Admin => Err(UnknownChoice),
            role => Ok(RegistrationRole(role)),
        }
    }
}

/// A stored user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// Integer id.
    pub id: UserId,
    /// 1-150 letters, digits and `@.+-_`; unique.
    pub username: String,
    /// Lower-cased; unique.
    pub email: String,
    /// What the user is.
    pub role: Role,
    /// Up to 100 characters, may be empty.
    pub department: String,
    /// Set by an administrator.
    pub is_verified: bool,
    /// An inactive user cannot log in and their tokens are refused.
    pub is_active: bool,
    /// When the account was made.
    pub date_joined: DateTime<Utc>,
    /// The last successful login.
    pub last_login: Option<DateTime<Utc>>,
    /// Tokens issued at or before this second (Unix time) are refused; 0 when never set.
    pub tokens_revoked_at: i64,
}

/// The result of a successful login: a token pair, the user, and a device token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Login {
    /// The new token pair (a new refresh-token family).
    pub tokens: TokenPair,
    /// The user who logged in.
    pub user: User,
    /// The account's device token: the one the login presented when it was honoured and
    /// still valid (its last use moved to now), otherwise a new one.
    pub device: String,
}

/// A login body whose fields passed their checks: `{"email", "password", "device"?}`.
#[derive(Clone)]
pub struct LoginInput {
    /// Trimmed and lower-cased.
    email: String,
    password: String,
    /// The presented device token, kept only when it has a device token's shape.
    device: Option<String>,
}

impl std::fmt::Debug for LoginInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginInput")
            .field("email", &self.email)
            .field("password", &"***")
            .field("device", &self.device.as_ref().map(|_| "***"))
            .finish()
    }
}

impl LoginInput {
    /// Checks `{"email", "password", "device"?}`: email and password are required strings
    /// (the password kept exactly as sent). A `device` that is not a device token (not a
    /// string, or not 43 base64url characters) is ignored, never an error.
    pub fn from_fields(body: &JsonObject) -> Result<LoginInput, Error> {
        let mut reader = FieldReader::new(body);
        let email = reader.required_text("email", Text::REQUIRED);
        let password = reader.required_text("password", Text::REQUIRED_VERBATIM);
        let (email, password) = reader.finish_with(both(email, password))?;
        let input = LoginInput::new(&email, &password);
        Ok(match body.get("device") {
            Some(Value::String(device)) => input.with_device(device),
            _ => input,
        })
    }

    /// A login by email (case-insensitive) and password, with no device token.
    pub fn new(email: &str, password: &str) -> LoginInput {
        LoginInput {
            email: email.trim().to_lowercase(),
            password: password.to_owned(),
            device: None,
        }
    }

    /// The same login presenting a device token; one without a device token's shape is
    /// ignored.
    pub fn with_device(self, token: &str) -> LoginInput {
        LoginInput {
            device: Device::of(token).map(|_| token.to_owned()),
            ..self
        }
    }

    /// The email, trimmed and lower-cased.
    pub fn email(&self) -> &str {
        &self.email
    }

    /// The key of this email's failure budget (`docs/API.md`, Login throttling): the
    /// SHA-256 of the lower-cased email, whether or not an account has it.
    pub fn email_key(&self) -> EmailKey {
        EmailKey::of(&self.email)
    }

    /// The device of the presented device token, if the body carried one of the right
    /// shape (valid or not: see [`Accounts::trusted_device`]).
    pub fn device(&self) -> Option<Device> {
        self.device.as_deref().and_then(Device::of)
    }
}

/// What a per-account login failure budget is keyed by: the SHA-256 of the lower-cased
/// email, so that every key takes 32 bytes whatever the email sent.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct EmailKey([u8; 32]);

impl EmailKey {
    /// The key of `email`, trimmed and lower-cased first (what a registration's per-email
    /// throttle counts, whether or not the email is valid).
    pub fn of(email: &str) -> EmailKey {
        EmailKey(Sha256::digest(email.trim().to_lowercase().as_bytes()).into())
    }

    /// The SHA-256 of the lower-cased email: the only form a shared throttle keeps.
    pub fn digest(&self) -> [u8; 32] {
        self.0
    }
}

impl std::fmt::Debug for EmailKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EmailKey(..)")
    }
}

/// The dashboard's counts, computed from stored data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dashboard {
    /// The user.
    pub user: User,
    /// The user's sessions updated in the last 7 days.
    pub recent_chats: u64,
    /// Messages (of every sender) in all the user's sessions.
    pub total_messages: u64,
}

/// A new account made by an administrator: any role, optionally verified.
#[derive(Clone, Debug)]
pub struct NewUser {
    /// The email (checked, then lower-cased).
    pub email: String,
    /// The username.
    pub username: String,
    /// The password, checked against the API's password rules.
    pub password: String,
    /// Any role, `admin` included.
    pub role: Role,
    /// The department, may be empty.
    pub department: String,
    /// Whether the account starts verified.
    pub is_verified: bool,
}

/// Filters for [`Accounts::list`]; `None` matches everything.
#[derive(Clone, Debug, Default)]
pub struct UserFilter {
    /// Only this role.
    pub role: Option<Role>,
    /// Only verified (`true`) or unverified (`false`) users.
    pub is_verified: Option<bool>,
    /// Only active or inactive users.
    pub is_active: Option<bool>,
    /// Only users whose username or email contains this text (case-insensitive for ASCII).
    pub search: Option<String>,
}

/// Account operations on a store (returned by [`crate::Narutalk::accounts`]).
pub struct Accounts<'a> {
    pub(crate) store: &'a dyn AccountStore,
    pub(crate) keys: &'a TokenKeys,
    pub(crate) hashing: &'a password::PasswordHashing,
    pub(crate) events: &'a EventBus,
    pub(crate) origin: Origin,
}

/// A registration whose fields passed every check of `POST /api/auth/register/`
/// ([`Accounts::check_registration`]): [`Accounts::register`] creates it. The username
/// and email were free when checked; a registration that loses a race for them still
/// answers the same field error.
#[derive(Clone)]
pub struct Registration {
    account: CheckedAccount,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.account.fmt(f)
    }
}

impl Registration {
    /// The username, trimmed.
    pub fn username(&self) -> &str {
        &self.account.username
    }

    /// The email, trimmed and lower-cased.
    pub fn email(&self) -> &str {
        &self.account.email
    }

    /// The role asked for: `user`, `doctor` or `nurse`.
    pub fn role(&self) -> Role {
        self.account.role
    }
}

/// A profile change whose fields passed every check of `PUT`/`PATCH /api/auth/profile/`
/// for one user ([`Accounts::check_profile`]): [`Accounts::update_profile`] applies it.
#[derive(Clone, Debug)]
pub struct ProfileUpdate {
    user: UserId,
    change: ProfileChange,
}

impl ProfileUpdate {
    /// The user it changes.
    pub fn user(&self) -> UserId {
        self.user
    }
}

/// A password change whose fields passed every check of `POST /api/auth/password/` for
/// one user, the old password included ([`Accounts::check_password_change`]):
/// [`Accounts::change_password`] applies it, unless the password was replaced since the
/// old one was checked.
#[derive(Clone)]
pub struct PasswordChange {
    user: UserId,
    new_password: String,
    /// The stored hash the old password was checked against: only that one is replaced.
    checked_hash: String,
}

impl std::fmt::Debug for PasswordChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordChange")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl PasswordChange {
    /// The user whose password it changes.
    pub fn user(&self) -> UserId {
        self.user
    }
}

/// The fields every new account has, checked: a registration's or an administrator's.
#[derive(Clone)]
struct CheckedAccount {
    username: String,
    email: String,
    password: String,
    role: Role,
    department: String,
    is_verified: bool,
}

impl std::fmt::Debug for CheckedAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("username", &self.username)
            .field("email", &self.email)
            .field("password", &"***")
            .field("role", &self.role)
            .field("department", &self.department)
            .finish()
    }
}

/// The fields of a new account as read and checked.
struct AccountFields {
    username: String,
    email: String,
    password: String,
    department: String,
}

impl AccountFields {
    /// The account with this role and verification.
    fn into_account(self, role: Role, is_verified: bool) -> CheckedAccount {
        CheckedAccount {
            username: self.username,
            email: self.email,
            password: self.password,
            role,
            department: self.department,
            is_verified,
        }
    }
}

impl Accounts<'_> {
    /// Records `request_id` with the changes these calls make (the outbox's request id).
    pub fn with_request(mut self, request_id: &str) -> Self {
        self.origin.request_id = Some(request_id.into());
        self
    }

    /// Publishes that every token of `user` was revoked (after the commit that did it).
    fn revoked(&self, user: UserId, cause: Revocation) {
        self.events.publish(&Event::UserRevoked { user, cause });
    }

    /// `POST /api/auth/register/`: checks the body ([`Accounts::check_registration`]) and
    /// creates the account ([`Accounts::register`]).
    pub fn register_fields(&self, body: &JsonObject) -> Result<User, Error> {
        self.register(self.check_registration(body)?)
    }

    /// Checks `{"username", "email", "password", "password_confirm", "role"?,
    /// "department"?}` with every rule of the API: a `user`, `doctor` or `nurse` (never
    /// `admin`) whose username and email are free. Every field's problems are reported at
    /// once; `Passwords do not match.` only when every field passed.
    pub fn check_registration(&self, body: &JsonObject) -> Result<Registration, Error> {
        let mut reader = FieldReader::new(body);
        let fields = self.read_account_fields(&mut reader)?;
        let password_confirm = reader.required_text("password_confirm", Text::REQUIRED_VERBATIM);
        let role = reader
            .optional_choice::<RegistrationRole>("role")
            .map(|role| role.map_or(Role::User, |r| r.0));
        let (fields, (password_confirm, role)) =
            reader.finish_with(both(fields, both(password_confirm, role)))?;
        if password_confirm != fields.password {
            return Err(FieldErrors::single(FieldErrors::NON_FIELD, PASSWORDS_DIFFER).into());
        }
        Ok(Registration {
            account: fields.into_account(role, false),
        })
    }

    /// Creates a checked registration's account, unverified.
    pub fn register(&self, registration: Registration) -> Result<User, Error> {
        self.insert(registration.account)
    }

    /// Creates an account with any role, `admin` included (the administrators' tool). The
    /// same field and password rules apply; errors name the fields as registration does.
    pub fn create(&self, new: &NewUser) -> Result<User, Error> {
        let mut body = JsonObject::new();
        for (field, value) in [
            ("username", &new.username),
            ("email", &new.email),
            ("password", &new.password),
            ("department", &new.department),
        ] {
            body.insert(field.to_owned(), Value::String(value.clone()));
        }
        let mut reader = FieldReader::new(&body);
        let fields = self.read_account_fields(&mut reader)?;
        let fields = reader.finish_with(fields)?;
        self.insert(fields.into_account(new.role, new.is_verified))
    }

    /// `POST /api/auth/login/` with no throttle: checks the fields, honours a valid device
    /// token of the account, and logs in ([`Accounts::login_with`]).
    pub fn login_fields(&self, body: &JsonObject) -> Result<Login, Error> {
        let input = LoginInput::from_fields(body)?;
        let device = self.trusted_device(&input)?;
        self.login_with(&input, device)
    }

    /// Logs in by email (case-insensitive) and password, and issues a token pair in a new
    /// family and a new device token. A wrong password, an unknown email and an inactive
    /// account all answer [`Error::BadCredentials`] after the same hashing work.
    pub fn login(&self, email: &str, password: &str) -> Result<Login, Error> {
        self.login_with(&LoginInput::new(email, password), None)
    }

    /// The device of the login's device token when it is a valid token (not expired, not
    /// revoked) of the account its email names; `None` otherwise, also for an unknown
    /// email. One read, no hashing: a server asks this before it picks the failure budget
    /// that the login counts against.
    pub fn trusted_device(&self, input: &LoginInput) -> Result<Option<Device>, Error> {
        let Some(device) = input.device() else {
            return Ok(None);
        };
        let valid_after = devices::valid_after(time::now());
        let belongs = self
            .store
            .device_of_email(device, &input.email, valid_after)?;
        Ok(belongs.then_some(device))
    }

    /// Logs in with checked fields (the hashing step of `POST /api/auth/login/`) and
    /// issues a token pair in a new family. `device` is the device token the caller
    /// honours (from [`Accounts::trusted_device`], when its budget allowed): if it is the
    /// login's own and still a valid token of the account, the answer carries it again and
    /// its last use moves to now; otherwise, or with `None`, the answer carries a new
    /// device token. A wrong password, an unknown email and an inactive account all answer
    /// [`Error::BadCredentials`] after the same hashing work.
    pub fn login_with(&self, input: &LoginInput, device: Option<Device>) -> Result<Login, Error> {
        let email = input.email.as_str();
        let password = input.password.as_str();
        let honoured = device
            .filter(|device| input.device() == Some(*device))
            .zip(input.device.as_deref());
        let found = self.store.credentials_by_email(email)?;
        let (user, verified_hash) = match found {
            Some(Credentials {
                user,
                password_hash,
            }) => {
                let matches = self.hashing.verify(password, &password_hash)?;
                if !matches || !user.is_active {
                    return Err(Error::BadCredentials);
                }
                (user, password_hash)
            }
            None => {
                self.hashing.verify_nothing(password)?;
                return Err(Error::BadCredentials);
            }
        };
        let (refresh, family) = self.keys.new_refresh();
        let (new_token, new_device) = devices::new_token()?;
        let now = time::now();
        // The write re-reads the user inside the write lock: while argon2 ran (outside
        // it), an administrator may have deactivated the account, or a reset or change may
        // have replaced the password just checked; either refuses this login.
        let recorded = self
            .store
            .record_login(&LoginRecord {
                user_id: user.id,
                verified_hash: &verified_hash,
                now,
                refresh: &refresh,
                lifetimes: self.keys.lifetimes(),
                honoured_device: honoured.map(|(device, _)| device),
                new_device,
                devices_valid_after: devices::valid_after(now),
            })?
            .ok_or(Error::BadCredentials)?;
        let device = match honoured {
            Some((_, token)) if recorded.device_renewed => token.to_owned(),
            _ => new_token,
        };
        Ok(Login {
            tokens: self
                .keys
                .login_pair(recorded.user.id, &refresh, family, recorded.issued_at)?,
            user: recorded.user,
            device,
        })
    }

    /// The user with this id.
    pub fn get(&self, id: UserId) -> Result<User, Error> {
        self.store.user(id)?.ok_or(Error::NotFound)
    }

    /// The user with this email (case-insensitive).
    pub fn find_by_email(&self, email: &str) -> Result<User, Error> {
        let email = email.trim().to_lowercase();
        self.store
            .credentials_by_email(&email)?
            .map(|credentials| credentials.user)
            .ok_or(Error::NotFound)
    }

    /// The user named by an id (all digits) or an email: how the CLI's `USER` argument works.
    pub fn resolve(&self, id_or_email: &str) -> Result<User, Error> {
        let key = id_or_email.trim();
        if !key.is_empty() && key.bytes().all(|b| b.is_ascii_digit()) {
            let id = key.parse().map_err(|_| Error::NotFound)?;
            self.get(UserId(id))
        } else {
            self.find_by_email(key)
        }
    }

    /// `PUT`/`PATCH /api/auth/profile/`: checks the body ([`Accounts::check_profile`])
    /// and applies it ([`Accounts::update_profile`]).
    pub fn update_profile_fields(
        &self,
        id: UserId,
        body: &JsonObject,
        partial: bool,
    ) -> Result<User, Error> {
        self.update_profile(self.check_profile(id, body, partial)?)
    }

    /// Checks a change of `username`, `email` and `department` for user `id` (`partial`
    /// false: username and email required), each new name free. `id`, `role` and
    /// `is_verified` in the body are ignored, as DRF ignores read-only fields.
    /// [`Error::NotFound`] for an unknown user, before any field.
    pub fn check_profile(
        &self,
        id: UserId,
        body: &JsonObject,
        partial: bool,
    ) -> Result<ProfileUpdate, Error> {
        self.get(id)?;
        let mut reader = FieldReader::new(body);
        let username = read_username(&mut reader, !partial);
        let email = read_email(&mut reader, !partial);
        let department = read_department(&mut reader, false);
        self.check_unique(
            &mut reader,
            username.as_ref().ok().and_then(Option::as_deref),
            email.as_ref().ok().and_then(Option::as_deref),
            Some(id),
        )?;
        let (username, (email, department)) =
            reader.finish_with(both(username, both(email, department)))?;
        Ok(ProfileUpdate {
            user: id,
            change: ProfileChange {
                username,
                email,
                department,
            },
        })
    }

    /// Applies a checked profile change; a username or email taken meanwhile is still
    /// the field error.
    pub fn update_profile(&self, update: ProfileUpdate) -> Result<User, Error> {
        self.store
            .update_profile(update.user, &update.change)?
            .map_err(taken_as_field_error)
    }

    /// `POST /api/auth/password/`: checks the body ([`Accounts::check_password_change`])
    /// and applies it ([`Accounts::change_password`]).
    pub fn change_password_fields(&self, id: UserId, body: &JsonObject) -> Result<(), Error> {
        self.change_password(self.check_password_change(id, body)?)
    }

    /// Checks `{"old_password", "new_password"}` for user `id`: the old password against
    /// the stored hash, the new one against the password rules. [`Error::NotFound`] for an
    /// unknown user, before any field.
    pub fn check_password_change(
        &self,
        id: UserId,
        body: &JsonObject,
    ) -> Result<PasswordChange, Error> {
        let Credentials {
            user,
            password_hash: stored,
        } = self.store.credentials_by_id(id)?.ok_or(Error::NotFound)?;
        let mut reader = FieldReader::new(body);
        let old_password = reader.required_text("old_password", Text::REQUIRED_VERBATIM);
        let new_password = reader.required_text("new_password", Text::REQUIRED_VERBATIM);
        let old_password = match old_password {
            Ok(old_password) if !self.hashing.verify(&old_password, &stored)? => {
                Err(reader.fail("old_password", OLD_PASSWORD_WRONG))
            }
            other => other.map(drop),
        };
        let new_password = new_password.and_then(|password| {
            check_password(
                &mut reader,
                "new_password",
                &password,
                Some(&user.username),
                Some(&user.email),
            )
            .map(|()| password)
        });
        let ((), new_password) = reader.finish_with(both(old_password, new_password))?;
        Ok(PasswordChange {
            user: id,
            new_password,
            checked_hash: stored,
        })
    }

    /// Stores a checked password change and revokes every token the user holds. Only the
    /// hash the old password was checked against is replaced: a reset that landed
    /// meanwhile is not undone by someone who knew the old password (the old password is
    /// then reported wrong).
    pub fn change_password(&self, change: PasswordChange) -> Result<(), Error> {
        self.store_password(
            change.user,
            &change.new_password,
            Some(&change.checked_hash),
        )
        .map_err(|error| match error {
            Error::NotFound => FieldErrors::single("old_password", OLD_PASSWORD_WRONG).into(),
            other => other,
        })
    }

    /// Sets a new password chosen by an administrator (checked against the password
    /// rules) and revokes every token the user holds.
    pub fn reset_password(&self, id: UserId, new_password: &str) -> Result<(), Error> {
        let user = self.get(id)?;
        let mut problems = FieldErrors::new();
        for message in
            policy::password_problems(new_password, Some(&user.username), Some(&user.email))
        {
            problems.add("password", message);
        }
        problems.into_result()?;
        self.store_password(id, new_password, None)
    }

    /// `GET /api/auth/dashboard/`: the user with real counts.
    pub fn dashboard(&self, id: UserId) -> Result<Dashboard, Error> {
        self.store.dashboard(id, time::now() - RECENT_CHATS_WINDOW)
    }

    /// Users matching `filter`, by id.
    pub fn list(&self, filter: &UserFilter) -> Result<Vec<User>, Error> {
        self.store.users(filter)
    }

    /// Changes a user's role.
    pub fn set_role(&self, id: UserId, role: Role) -> Result<User, Error> {
        self.store.change_user(
            id,
            UserChange::Role(role),
            &Audit::now(&self.origin, Actor::Administrator),
        )
    }

    /// Marks a user verified or not.
    pub fn set_verified(&self, id: UserId, verified: bool) -> Result<User, Error> {
        self.store.change_user(
            id,
            UserChange::Verified(verified),
            &Audit::now(&self.origin, Actor::Administrator),
        )
    }

    /// Activates or deactivates a user; deactivation revokes every token at once.
    pub fn set_active(&self, id: UserId, active: bool) -> Result<User, Error> {
        let user = self.store.change_user(
            id,
            UserChange::Active(active),
            &Audit::now(&self.origin, Actor::Administrator),
        )?;
        if !active {
            self.revoked(id, Revocation::Deactivated);
        }
        Ok(user)
    }

    /// "Log out everywhere": revokes every access and refresh token the user holds.
    pub fn logout_all(&self, id: UserId) -> Result<(), Error> {
        self.store
            .revoke_all(id, &Audit::now(&self.origin, Actor::Administrator))?;
        self.revoked(id, Revocation::TokensRevoked);
        Ok(())
    }

    /// Deletes a user with their sessions, messages and tokens.
    pub fn delete(&self, id: UserId) -> Result<(), Error> {
        self.store
            .delete_user(id, &Audit::now(&self.origin, Actor::Administrator))?;
        self.revoked(id, Revocation::Deleted);
        Ok(())
    }

    /// Hashes and stores a new password and revokes every token. With `replacing`, only if
    /// the stored hash is still that one ([`Error::NotFound`] otherwise).
    fn store_password(
        &self,
        id: UserId,
        new_password: &str,
        replacing: Option<&str>,
    ) -> Result<(), Error> {
        let hashed = self.hashing.hash(new_password)?;
        // The user's own change, or an administrator's reset.
        let actor = match replacing {
            Some(_) => Actor::User(id),
            None => Actor::Administrator,
        };
        self.store
            .replace_password(id, &hashed, replacing, &Audit::now(&self.origin, actor))?;
        self.revoked(id, Revocation::TokensRevoked);
        Ok(())
    }

    /// Reads and checks the fields every new account has: username, email, password (with
    /// the password rules) and department, and whether username and email are free.
    fn read_account_fields(
        &self,
        reader: &mut FieldReader<'_>,
    ) -> Result<Checked<AccountFields>, Error> {
        let username = read_username(reader, true).map(Option::unwrap_or_default);
        let email = read_email(reader, true).map(Option::unwrap_or_default);
        let password = reader.required_text("password", Text::REQUIRED_VERBATIM);
        let department = read_department(reader, false).map(Option::unwrap_or_default);
        let password = password.and_then(|password| {
            check_password(
                reader,
                "password",
                &password,
                username.as_deref().ok(),
                email.as_deref().ok(),
            )
            .map(|()| password)
        });
        self.check_unique(
            reader,
            username.as_deref().ok(),
            email.as_deref().ok(),
            None,
        )?;
        let fields = both(both(username, email), both(password, department));
        Ok(fields.map(
            |((username, email), (password, department))| AccountFields {
                username,
                email,
                password,
                department,
            },
        ))
    }

    /// Records "already exists" for a username or email held by another user.
    fn check_unique(
        &self,
        reader: &mut FieldReader<'_>,
        username: Option<&str>,
        email: Option<&str>,
        except: Option<UserId>,
    ) -> Result<(), Error> {
        let taken = self.store.names_taken(username, email, except)?;
        let (username_taken, email_taken) = (taken.username, taken.email);
        if username_taken {
            reader.fail("username", USERNAME_TAKEN);
        }
        if email_taken {
            reader.fail("email", EMAIL_TAKEN);
        }
        Ok(())
    }

    fn insert(&self, account: CheckedAccount) -> Result<User, Error> {
        let password_hash = self.hashing.hash(&account.password)?;
        let account = NewAccount {
            username: account.username,
            email: account.email,
            password_hash,
            role: account.role,
            department: account.department,
            is_verified: account.is_verified,
            date_joined: time::now(),
        };
        self.store
            .insert_user(&account)?
            .map_err(taken_as_field_error)
    }
}

/// A username (trimmed): required, or `Ok(None)` when left out.
fn read_username(reader: &mut FieldReader<'_>, required: bool) -> Checked<Option<String>> {
    let rule = Text::REQUIRED.max(USERNAME_MAX_CHARS);
    let username = match required {
        true => reader.required_text("username", rule).map(Some),
        false => reader.optional_text("username", rule),
    }?;
    match username {
        Some(username) if !policy::is_valid_username(&username) => {
            Err(reader.fail("username", policy::USERNAME_INVALID))
        }
        username => Ok(username),
    }
}

/// An email (trimmed, then lower-cased): required, or `Ok(None)` when left out.
fn read_email(reader: &mut FieldReader<'_>, required: bool) -> Checked<Option<String>> {
    let rule = Text::REQUIRED.max(EMAIL_MAX_CHARS);
    let email = match required {
        true => reader.required_text("email", rule).map(Some),
        false => reader.optional_text("email", rule),
    }?;
    match email {
        Some(email) if !policy::is_valid_email(&email) => {
            Err(reader.fail("email", policy::EMAIL_INVALID))
        }
        email => Ok(email.map(|email| email.to_lowercase())),
    }
}

/// A department (trimmed, may be empty), or `Ok(None)` when left out.
fn read_department(reader: &mut FieldReader<'_>, required: bool) -> Checked<Option<String>> {
    let rule = Text::REQUIRED.blank_allowed().max(DEPARTMENT_MAX_CHARS);
    match required {
        true => reader.required_text("department", rule).map(Some),
        false => reader.optional_text("department", rule),
    }
}

/// Records every password rule `password` breaks under `field`.
fn check_password(
    reader: &mut FieldReader<'_>,
    field: &str,
    password: &str,
    username: Option<&str>,
    email: Option<&str>,
) -> Checked<()> {
    let mut checked = Ok(());
    for message in policy::password_problems(password, username, email) {
        checked = Err(reader.fail(field, message));
    }
    checked
}

/// Both checked values, or a failure when either failed.
fn both<A, B>(a: Checked<A>, b: Checked<B>) -> Checked<(A, B)> {
    Ok((a?, b?))
}

/// A username or email that a write found taken (two registrations at once, both past the
/// check) is still a field error, never a 500.
fn taken_as_field_error(taken: Taken) -> Error {
    match taken {
        Taken::Email => FieldErrors::single("email", EMAIL_TAKEN).into(),
        Taken::Username => FieldErrors::single("username", USERNAME_TAKEN).into(),
    }
}
