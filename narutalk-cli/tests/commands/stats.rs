//! Protects `narutalk stats`: users by role and verification, sessions by category, and
//! messages on each of the last 14 UTC days, as tables and as JSON.

use chrono::{Days, Utc};
use narutalk_core::accounts::Role;
use narutalk_core::chat::Category;
use serde_json::{Value, json};

use crate::support::{Env, json_of, stdout_of};

#[test]
fn stats_count_users_sessions_and_messages_per_day() {
    // Arrange
    let env = Env::new();
    let kim = env.user("kim", Role::Doctor);
    env.user("lee", Role::Nurse);
    env.user("root", Role::Admin);
    env.core().accounts().set_verified(kim.id, true).unwrap();
    env.session(&kim, "Headache", Category::Emergency);
    let today = Utc::now().date_naive();

    // Act
    let stats = json_of(&mut env.run(&["stats", "--json"]));
    let table = stdout_of(&mut env.run(&["stats"]));

    // Assert
    let per_day: Vec<Value> = (0..14u64)
        .rev()
        .map(|back| {
            let date = today.checked_sub_days(Days::new(back)).unwrap();
            json!({"date": date.to_string(), "messages": if back == 0 { 2 } else { 0 }})
        })
        .collect();
    assert_eq!(
        stats,
        json!({
            "users": {"total": 3, "by_role": [
                {"role": "admin", "total": 1, "verified": 0, "unverified": 1, "active": 1, "inactive": 0},
                {"role": "doctor", "total": 1, "verified": 1, "unverified": 0, "active": 1, "inactive": 0},
                {"role": "nurse", "total": 1, "verified": 0, "unverified": 1, "active": 1, "inactive": 0},
                {"role": "user", "total": 0, "verified": 0, "unverified": 0, "active": 0, "inactive": 0},
            ]},
            "sessions": {"total": 1, "by_category": [
                {"category": "medical", "sessions": 0, "messages": 0},
                {"category": "general", "sessions": 0, "messages": 0},
                {"category": "emergency", "sessions": 1, "messages": 2},
                {"category": "consultation", "sessions": 0, "messages": 0},
            ]},
            "messages": {"total": 2, "per_day": per_day},
        })
    );
    let expected_start = "\
ROLE    USERS  VERIFIED  UNVERIFIED  ACTIVE  INACTIVE
admin   1      0         1           1       0
doctor  1      1         0           1       0
nurse   1      0         1           1       0
user    0      0         0           0       0
all     3      1         2           3       0

CATEGORY      SESSIONS  MESSAGES
medical       0         0
general       0         0
emergency     1         2
consultation  0         0
all           1         2

DAY (UTC)   MESSAGES
";
    assert!(table.starts_with(expected_start), "{table}");
    assert!(table.ends_with(&format!("{today}  2\n")), "{table}");
    assert_eq!(table.lines().count(), expected_start.lines().count() + 14);
}
