//! `narutalk user ...`: accounts. USER is an id or an email. Every rule (field checks,
//! password rules, revocation of tokens) is the core's; this module parses, asks and shows.

use anyhow::Context;
use clap::Subcommand;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use narutalk_core::Narutalk;
use narutalk_core::accounts::{NewUser, Role, User, UserFilter, UserId};
use narutalk_core::error::Error;
use narutalk_core::time::format_rfc3339;
use serde::Serialize;

use crate::output::{
    Give, Limit, cut, limit, minute, note, note_more, print_fields, print_json, print_lines,
    print_list, rows_shown, table, yes_no,
};
use crate::{core_error, prompt};

/// `narutalk user ...`
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Creates an account with any role, admin included; it starts verified.
    ///
    /// The registration rules apply: a valid email of at most 254 characters and a username
    /// of 1-150 letters, digits or @.+-_, both unique; a department of at most 100
    /// characters; a password of 8-128 characters, not entirely digits, not a common
    /// password, not too similar to the username or email. The password is asked twice at
    /// a hidden prompt, or read from standard input with --password-stdin; it is never a
    /// flag value.
    #[command(
        after_help = "Examples:\n  narutalk user create --email root@example.com --username root --role admin\n  printf '%s\\n' \"$PASSWORD\" | narutalk user create --email kim@example.com --username kim --role doctor --department Cardiology --password-stdin"
    )]
    Create {
        /// Email address (stored lower-cased; unique).
        #[arg(long)]
        email: String,
        /// Username: letters, digits and @.+-_ (unique).
        #[arg(long)]
        username: String,
        /// admin, doctor, nurse or user.
        #[arg(long, default_value = "user", value_parser = role_parser())]
        role: Role,
        /// Department, up to 100 characters.
        #[arg(long, default_value = "")]
        department: String,
        /// Read the password from standard input (one line) instead of a prompt.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Lists users by id, with filters.
    ///
    /// On a terminal the list stops after a screenful (a last line on stderr counts the
    /// rest) and the table fits its width: ids and emails are never split, and the columns
    /// that do not fit are left out (--wide shows them). In a pipe or with --json every
    /// user is listed, one a line, unless --limit says otherwise.
    #[command(
        after_help = "Examples:\n  narutalk user list --role doctor --verified false\n  narutalk user list --search kim --json\n  narutalk user list --limit all --wide"
    )]
    List {
        /// Only this role.
        #[arg(long, value_parser = role_parser())]
        role: Option<Role>,
        /// Only verified (true) or unverified (false) users.
        #[arg(long, value_name = "true|false")]
        verified: Option<bool>,
        /// Only active (true) or deactivated (false) users.
        #[arg(long, value_name = "true|false")]
        active: Option<bool>,
        /// Only users whose username or email contains TEXT.
        #[arg(long, value_name = "TEXT")]
        search: Option<String>,
        /// Show at most N users, or all (default: a screenful on a terminal, otherwise all).
        #[arg(long, value_name = "N|all", value_parser = limit)]
        limit: Option<Limit>,
        /// Show every column at full width, whatever the terminal's width.
        #[arg(long)]
        wide: bool,
        /// Print JSON instead of a table, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Shows one user, with their sessions and messages counted.
    #[command(
        after_help = "Examples:\n  narutalk user show kim@example.com\n  narutalk user show 3 --json"
    )]
    Show {
        /// The user's id or email.
        user: String,
        /// Print JSON instead of a table, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Changes a user's role.
    #[command(after_help = "Example:\n  narutalk user set-role kim@example.com doctor")]
    SetRole {
        /// The user's id or email.
        user: String,
        /// admin, doctor, nurse or user.
        #[arg(value_parser = role_parser())]
        role: Role,
    },
    /// Marks a user verified (for example a doctor whose identity was checked).
    #[command(after_help = "Example:\n  narutalk user verify kim@example.com")]
    Verify {
        /// The user's id or email.
        user: String,
    },
    /// Marks a user not verified.
    #[command(after_help = "Example:\n  narutalk user unverify kim@example.com")]
    Unverify {
        /// The user's id or email.
        user: String,
    },
    /// Lets a deactivated user log in again.
    #[command(after_help = "Example:\n  narutalk user activate kim@example.com")]
    Activate {
        /// The user's id or email.
        user: String,
    },
    /// Stops a user from logging in and revokes every token they hold, at once.
    #[command(after_help = "Example:\n  narutalk user deactivate kim@example.com")]
    Deactivate {
        /// The user's id or email.
        user: String,
    },
    /// Revokes every access and refresh token the user holds ("log out everywhere").
    #[command(after_help = "Example:\n  narutalk user logout-all kim@example.com")]
    LogoutAll {
        /// The user's id or email.
        user: String,
    },
    /// Sets a new password (asked at a hidden prompt, or --password-stdin) and revokes
    /// every token the user holds.
    #[command(
        after_help = "Examples:\n  narutalk user reset-password kim@example.com\n  printf '%s\\n' \"$PASSWORD\" | narutalk user reset-password 3 --password-stdin"
    )]
    ResetPassword {
        /// The user's id or email.
        user: String,
        /// Read the password from standard input (one line) instead of a prompt.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Deletes a user with their sessions, messages and tokens (asks first).
    #[command(
        after_help = "Examples:\n  narutalk user delete kim@example.com\n  narutalk user delete 3 --yes"
    )]
    Delete {
        /// The user's id or email.
        user: String,
        /// Do not ask; required without a terminal.
        #[arg(long)]
        yes: bool,
    },
}

/// Runs a `user` subcommand.
pub fn run(narutalk: &Narutalk, command: UserCommand) -> anyhow::Result<()> {
    let accounts = narutalk.accounts();
    match command {
        UserCommand::Create {
            email,
            username,
            role,
            department,
            password_stdin,
        } => {
            let password = prompt::new_password(password_stdin, &username, &email)?;
            let user = accounts
                .create(&NewUser {
                    email: email.clone(),
                    username,
                    password,
                    role,
                    department,
                    is_verified: true,
                })
                .map_err(core_error)
                .with_context(|| format!("Cannot create user {email}"))?;
            print_lines(&format!(
                "Created user {} ({}, {}), role {}, verified.",
                user.id, user.email, user.username, user.role
            ))
        }
        UserCommand::List {
            role,
            verified,
            active,
            search,
            limit,
            wide,
            json,
        } => {
            let filter = UserFilter {
                role,
                is_verified: verified,
                is_active: active,
                search,
            };
            let mut users = accounts.list(&filter).map_err(core_error)?;
            let more = cut(&mut users, rows_shown(limit, json));
            list(&users, json, wide)?;
            note_more(more, "users");
            Ok(())
        }
        UserCommand::Show { user, json } => show(narutalk, &resolve(narutalk, &user)?, json),
        UserCommand::SetRole { user, role } => {
            let user = resolve(narutalk, &user)?;
            let user = accounts.set_role(user.id, role).map_err(core_error)?;
            done(&user, &format!("has the role {}", user.role))
        }
        UserCommand::Verify { user } => set_verified(narutalk, &user, true),
        UserCommand::Unverify { user } => set_verified(narutalk, &user, false),
        UserCommand::Activate { user } => {
            let user = resolve(narutalk, &user)?;
            let user = accounts.set_active(user.id, true).map_err(core_error)?;
            done(&user, "is active")
        }
        UserCommand::Deactivate { user } => {
            let user = resolve(narutalk, &user)?;
            let user = accounts.set_active(user.id, false).map_err(core_error)?;
            done(&user, "is deactivated; every token it held is revoked")
        }
        UserCommand::LogoutAll { user } => {
            let user = resolve(narutalk, &user)?;
            accounts.logout_all(user.id).map_err(core_error)?;
            done(
                &user,
                "is logged out everywhere; every token it held is revoked",
            )
        }
        UserCommand::ResetPassword {
            user,
            password_stdin,
        } => {
            let user = resolve(narutalk, &user)?;
            let password = prompt::new_password(password_stdin, &user.username, &user.email)?;
            accounts
                .reset_password(user.id, &password)
                .map_err(core_error)
                .with_context(|| format!("Cannot reset the password of user {}", label(&user)))?;
            done(&user, "has a new password; every token it held is revoked")
        }
        UserCommand::Delete { user, yes } => {
            let user = resolve(narutalk, &user)?;
            let activity = narutalk
                .admin()
                .user_activity(user.id)
                .map_err(core_error)?;
            prompt::confirm(
                &format!(
                    "Delete user {} with {} session(s) and {} message(s)?",
                    label(&user),
                    activity.sessions,
                    activity.messages
                ),
                yes,
                &format!("delete user {}", label(&user)),
            )?;
            accounts.delete(user.id).map_err(|error| match error {
                Error::NotFound => anyhow::anyhow!("No user {} any more", label(&user)),
                other => core_error(other),
            })?;
            print_lines(&format!(
                "Deleted user {} with {} session(s) and {} message(s).",
                label(&user),
                activity.sessions,
                activity.messages
            ))
        }
    }
}

/// The user an id or email names, or `No user X`.
pub fn resolve(narutalk: &Narutalk, key: &str) -> anyhow::Result<User> {
    narutalk
        .accounts()
        .resolve(key)
        .map_err(|error| match error {
            Error::NotFound => anyhow::anyhow!("No user {key}"),
            other => core_error(other),
        })
}

/// `admin`, `doctor`, `nurse` or `user`, with clap listing them in help and errors.
pub fn role_parser() -> impl TypedValueParser<Value = Role> {
    PossibleValuesParser::new(Role::ALL.map(Role::as_str)).try_map(|role| {
        role.parse::<Role>()
            .map_err(|_| format!("unknown role {role}"))
    })
}

fn set_verified(narutalk: &Narutalk, key: &str, verified: bool) -> anyhow::Result<()> {
    let user = resolve(narutalk, key)?;
    let user = narutalk
        .accounts()
        .set_verified(user.id, verified)
        .map_err(core_error)?;
    done(
        &user,
        if verified {
            "is verified"
        } else {
            "is not verified"
        },
    )
}

/// `User 3 (kim@example.com) is verified.`
fn done(user: &User, what: &str) -> anyhow::Result<()> {
    print_lines(&format!("User {} {what}.", label(user)))
}

/// `3 (kim@example.com)`
fn label(user: &User) -> String {
    format!("{} ({})", user.id, user.email)
}

fn list(users: &[User], json: bool, wide: bool) -> anyhow::Result<()> {
    if json {
        let users: Vec<UserJson<'_>> = users.iter().map(UserJson::from).collect();
        return print_json(&users);
    }
    if users.is_empty() {
        note("No users match.");
        return Ok(());
    }
    let mut rows = table([
        "ID",
        "EMAIL",
        "USERNAME",
        "ROLE",
        "DEPARTMENT",
        "VERIFIED",
        "ACTIVE",
        "JOINED",
        "LAST LOGIN",
    ]);
    for user in users {
        rows.add_row(vec![
            user.id.to_string(),
            user.email.clone(),
            user.username.clone(),
            user.role.to_string(),
            user.department.clone(),
            yes_no(user.is_verified).to_owned(),
            yes_no(user.is_active).to_owned(),
            minute(&user.date_joined),
            user.last_login
                .as_ref()
                .map_or_else(|| "never".into(), minute),
        ]);
    }
    // Left out first when the terminal is narrow: the times, the department, then the
    // flags, the role and the username; the id and email always stay whole.
    let gives = [
        Give::Keep,
        Give::Keep,
        Give::Drop(1),
        Give::Drop(2),
        Give::Drop(5),
        Give::Drop(3),
        Give::Drop(4),
        Give::Drop(6),
        Give::Drop(7),
    ];
    print_list(&mut rows, &gives, wide)
}

fn show(narutalk: &Narutalk, user: &User, json: bool) -> anyhow::Result<()> {
    let activity = narutalk
        .admin()
        .user_activity(user.id)
        .map_err(core_error)?;
    if json {
        return print_json(&UserJson {
            sessions: Some(activity.sessions),
            messages: Some(activity.messages),
            ..UserJson::from(user)
        });
    }
    print_fields(&[
        ("id", user.id.to_string()),
        ("email", user.email.clone()),
        ("username", user.username.clone()),
        ("role", user.role.to_string()),
        ("department", user.department.clone()),
        ("verified", yes_no(user.is_verified).to_owned()),
        ("active", yes_no(user.is_active).to_owned()),
        ("joined", minute(&user.date_joined)),
        (
            "last login",
            user.last_login
                .as_ref()
                .map_or_else(|| "never".into(), minute),
        ),
        (
            "tokens revoked",
            revoked_at(user).map_or_else(|| "never".into(), |at| minute(&at)),
        ),
        ("sessions", activity.sessions.to_string()),
        ("messages", activity.messages.to_string()),
    ])
}

/// A user as `--json` shows it: every field an administrator sees, timestamps in RFC 3339
/// with microseconds; `user show` adds the session and message counts.
#[derive(Serialize)]
struct UserJson<'a> {
    id: UserId,
    username: &'a str,
    email: &'a str,
    role: Role,
    department: &'a str,
    is_verified: bool,
    is_active: bool,
    date_joined: String,
    last_login: Option<String>,
    tokens_revoked_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sessions: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    messages: Option<u64>,
}

impl<'a> From<&'a User> for UserJson<'a> {
    fn from(user: &'a User) -> Self {
        UserJson {
            id: user.id,
            username: &user.username,
            email: &user.email,
            role: user.role,
            department: &user.department,
            is_verified: user.is_verified,
            is_active: user.is_active,
            date_joined: format_rfc3339(&user.date_joined),
            last_login: user.last_login.as_ref().map(format_rfc3339),
            tokens_revoked_at: revoked_at(user).as_ref().map(format_rfc3339),
            sessions: None,
            messages: None,
        }
    }
}

/// When the user's tokens were last revoked, if ever.
fn revoked_at(user: &User) -> Option<chrono::DateTime<chrono::Utc>> {
    match user.tokens_revoked_at {
        0 => None,
        seconds => chrono::DateTime::from_timestamp(seconds, 0),
    }
}
