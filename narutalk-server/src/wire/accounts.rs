//! Users, tokens and the dashboard, as `/api/auth/` answers them (contract section 2).

use narutalk_core::accounts::{self as core, Dashboard as CoreDashboard, Login};
use narutalk_core::tokens;
use serde::Serialize;
use utoipa::ToSchema;

/// A role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Made with the administrators' command line only.
    Admin,
    /// A doctor.
    Doctor,
    /// A nurse.
    Nurse,
    /// The default.
    User,
}

impl From<core::Role> for Role {
    fn from(role: core::Role) -> Self {
        match role {
            core::Role::Admin => Role::Admin,
            core::Role::Doctor => Role::Doctor,
            core::Role::Nurse => Role::Nurse,
            core::Role::User => Role::User,
        }
    }
}

/// A user.
#[derive(Serialize, ToSchema)]
pub struct User<'a> {
    /// The id, never reused.
    #[schema(minimum = 1)]
    pub id: i64,
    /// The username.
    #[schema(min_length = 1, max_length = 150)]
    pub username: &'a str,
    /// The email, lower-cased.
    #[schema(format = Email, min_length = 1, max_length = 254)]
    pub email: &'a str,
    /// The role.
    pub role: Role,
    /// May be empty.
    #[schema(max_length = 100)]
    pub department: &'a str,
    /// Set by an administrator.
    pub is_verified: bool,
}

impl<'a> From<&'a core::User> for User<'a> {
    fn from(user: &'a core::User) -> Self {
        User {
            id: user.id.0,
            username: &user.username,
            email: &user.email,
            role: user.role.into(),
            department: &user.department,
            is_verified: user.is_verified,
        }
    }
}

/// An access token and its refresh token.
#[derive(Serialize, ToSchema)]
pub struct TokenPair<'a> {
    /// Sent as `Authorization: Bearer <access>`; valid 60 minutes.
    #[schema(min_length = 1)]
    pub access: &'a str,
    /// Exchanged once for a new pair; valid 7 days.
    #[schema(min_length = 1)]
    pub refresh: &'a str,
}

impl<'a> From<&'a tokens::TokenPair> for TokenPair<'a> {
    fn from(pair: &'a tokens::TokenPair) -> Self {
        TokenPair {
            access: &pair.access,
            refresh: &pair.refresh,
        }
    }
}

/// A successful login.
#[derive(Serialize, ToSchema)]
pub struct LoginResponse<'a> {
    /// The access token.
    #[schema(min_length = 1)]
    pub access: &'a str,
    /// The refresh token.
    #[schema(min_length = 1)]
    pub refresh: &'a str,
    /// The user.
    pub user: User<'a>,
    /// The account's device token (43 base64url characters): the one sent, when it was
    /// valid and honoured, otherwise a new one. Keep it and send it with later logins.
    #[schema(min_length = 43, max_length = 43, pattern = "^[A-Za-z0-9_-]{43}$")]
    pub device: &'a str,
}

impl<'a> From<&'a Login> for LoginResponse<'a> {
    fn from(login: &'a Login) -> Self {
        LoginResponse {
            access: &login.tokens.access,
            refresh: &login.tokens.refresh,
            user: (&login.user).into(),
            device: &login.device,
        }
    }
}

/// The dashboard.
#[derive(Serialize, ToSchema)]
pub struct Dashboard<'a> {
    /// The user.
    pub user: User<'a>,
    /// Sessions updated in the last 7 days.
    pub recent_chats: u64,
    /// Messages in all the user's sessions.
    pub total_messages: u64,
}

impl<'a> From<&'a CoreDashboard> for Dashboard<'a> {
    fn from(dashboard: &'a CoreDashboard) -> Self {
        Dashboard {
            user: (&dashboard.user).into(),
            recent_chats: dashboard.recent_chats,
            total_messages: dashboard.total_messages,
        }
    }
}

#[cfg(test)]
mod tests {
    use narutalk_core::accounts::UserId;
    use serde_json::json;

    use super::*;

    fn user() -> core::User {
        core::User {
            id: UserId(3),
            username: "kim".to_owned(),
            email: "kim@example.com".to_owned(),
            role: core::Role::Doctor,
            department: String::new(),
            is_verified: false,
            is_active: true,
            date_joined: narutalk_core::time::now(),
            last_login: None,
            tokens_revoked_at: 12,
        }
    }

    #[test]
    fn a_user_is_the_contracts_six_keys_also_in_a_login_and_the_dashboard() {
        let user = user();
        let expected = r#"{"id":3,"username":"kim","email":"kim@example.com","role":"doctor","department":"","is_verified":false}"#;
        assert_eq!(serde_json::to_string(&User::from(&user)).unwrap(), expected);
        let login = Login {
            tokens: tokens::TokenPair {
                access: "a".to_owned(),
                refresh: "r".to_owned(),
            },
            user: user.clone(),
            device: "d".to_owned(),
        };
        assert_eq!(
            serde_json::to_string(&LoginResponse::from(&login)).unwrap(),
            format!(r#"{{"access":"a","refresh":"r","user":{expected},"device":"d"}}"#)
        );
        let dashboard = CoreDashboard {
            user,
            recent_chats: 1,
            total_messages: 2,
        };
        assert_eq!(
            serde_json::to_value(Dashboard::from(&dashboard)).unwrap(),
            json!({
                "user": serde_json::from_str::<serde_json::Value>(expected).unwrap(),
                "recent_chats": 1,
                "total_messages": 2,
            })
        );
    }

    #[test]
    fn every_role_is_named_as_the_core_stores_it() {
        for role in core::Role::ALL {
            let text = serde_json::to_value(Role::from(role)).unwrap();
            assert_eq!(text, role.as_str());
        }
    }
}
