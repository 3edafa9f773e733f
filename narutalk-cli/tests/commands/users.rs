//! Protects `narutalk user ...`: creation with any role under the contract's rules, the
//! password only from a prompt or standard input, listing and showing, the changes of
//! role, verification and activation, revocation of every token at once (contract
//! section 2), and deletion that asks first.

use narutalk_core::Narutalk;
use narutalk_core::accounts::{Role, UserId};
use narutalk_core::chat::Category;
use narutalk_core::error::{Error, TokenProblem};
use narutalk_core::store::OpenMode;
use serde_json::json;

use crate::support::{Env, PASSWORD, error_line, json_of, stdout_of};

const NEW_PASSWORD: &str = "quiet-meadow-9174";

#[test]
fn the_first_admin_is_created_verified_with_the_password_from_standard_input() {
    // Arrange
    let env = Env::new();

    // Act
    let stdout = stdout_of(
        env.run(&[
            "user",
            "create",
            "--email",
            "Root@Example.com",
            "--username",
            "root",
            "--role",
            "admin",
            "--department",
            "IT",
            "--password-stdin",
        ])
        .write_stdin(format!("{PASSWORD}\n")),
    );

    // Assert
    assert_eq!(
        stdout,
        "Created user 1 (root@example.com, root), role admin, verified.\n"
    );
    let user = env.core().accounts().get(UserId(1)).unwrap();
    assert_eq!(
        (user.role, user.is_verified, user.department.as_str()),
        (Role::Admin, true, "IT")
    );
    let login = env.core().accounts().login("root@example.com", PASSWORD);
    assert!(
        login.is_ok(),
        "the stored password is the line without its line break"
    );
}

#[test]
fn creation_applies_the_contracts_rules_with_one_line_naming_each_field() {
    let env = Env::new();
    env.user("kim", Role::Doctor);
    let cases: &[(&[&str], &str, &str)] = &[
        (
            &["--email", "lee@example.com", "--username", "lee"],
            "12345678\n",
            "Cannot create user lee@example.com: password: This password is too common. This password is entirely numeric.",
        ),
        (
            &["--email", "lee@example.com", "--username", "lee"],
            "lee@example.com\n",
            "Cannot create user lee@example.com: password: The password is too similar to the email address.",
        ),
        (
            &["--email", "not-an-email", "--username", "lee"],
            "violet-harbour-42\n",
            "Cannot create user not-an-email: email: Enter a valid email address.",
        ),
        (
            &["--email", "KIM@example.com", "--username", "kim"],
            "violet-harbour-42\n",
            "Cannot create user KIM@example.com: email: user with this email already exists. username: A user with that username already exists.",
        ),
        (
            &["--email", "lee@example.com", "--username", "lee!"],
            "violet-harbour-42\n",
            "Cannot create user lee@example.com: username: Enter a valid username. This value may contain only letters, numbers, and @/./+/-/_ characters.",
        ),
    ];
    for (flags, stdin, message) in cases {
        let mut args = vec!["user", "create", "--password-stdin"];
        args.extend_from_slice(flags);
        env.run(&args)
            .write_stdin(*stdin)
            .assert()
            .code(1)
            .stdout("")
            .stderr(error_line(message));
    }
    assert_eq!(
        env.core()
            .accounts()
            .list(&Default::default())
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn the_password_never_comes_from_a_flag_and_needs_a_terminal_or_standard_input() {
    let env = Env::new();
    let create = [
        "user",
        "create",
        "--email",
        "lee@example.com",
        "--username",
        "lee",
    ];
    env.run(&create)
        .write_stdin(format!("{PASSWORD}\n"))
        .assert()
        .code(2)
        .stderr(error_line(
            "No terminal to ask for the password on; pipe it in with --password-stdin.",
        ));
    let mut with_flag = create.to_vec();
    with_flag.extend(["--password", PASSWORD]);
    env.run(&with_flag)
        .assert()
        .code(2)
        .stderr(error_line(
            "Unexpected argument '--password' found; tip: a similar argument exists: '--password-stdin' (see --help).",
        ));
    let mut from_stdin = create.to_vec();
    from_stdin.push("--password-stdin");
    for (stdin, message) in [
        (
            "",
            "No password on standard input (--password-stdin reads it from there).",
        ),
        (
            "\n",
            "No password on standard input (--password-stdin reads it from there).",
        ),
        (
            "violet-harbour-42\nsecond line\n",
            "Standard input holds more than one line; --password-stdin takes the password alone.",
        ),
    ] {
        env.run(&from_stdin)
            .write_stdin(stdin)
            .assert()
            .code(1)
            .stderr(error_line(message));
    }
    assert!(
        env.core()
            .accounts()
            .list(&Default::default())
            .unwrap()
            .is_empty()
    );
}

#[test]
fn list_filters_by_role_verification_activity_and_search() {
    // Arrange
    let env = Env::new();
    let kim = env.user("kim", Role::Doctor);
    let lee = env.user("lee", Role::Nurse);
    env.user("park", Role::Doctor);
    env.core().accounts().set_verified(kim.id, true).unwrap();
    env.core().accounts().set_active(lee.id, false).unwrap();
    let emails = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["user", "list", "--json"];
        all.extend_from_slice(args);
        json_of(&mut env.run(&all))
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["email"].as_str().unwrap().to_owned())
            .collect()
    };

    // Act and assert
    assert_eq!(
        emails(&[]),
        ["kim@example.com", "lee@example.com", "park@example.com"]
    );
    assert_eq!(
        emails(&["--role", "doctor"]),
        ["kim@example.com", "park@example.com"]
    );
    assert_eq!(emails(&["--verified", "true"]), ["kim@example.com"]);
    assert_eq!(emails(&["--active", "false"]), ["lee@example.com"]);
    assert_eq!(emails(&["--search", "AR"]), ["park@example.com"]);
    assert_eq!(emails(&["--role", "admin"]), Vec::<String>::new());
    env.run(&["user", "list", "--role", "admin"])
        .assert()
        .success()
        .stdout("")
        .stderr("No users match.\n");
}

#[test]
fn list_prints_an_aligned_table_and_json_has_every_administrators_field() {
    let env = Env::new();
    let kim = env.user("kim", Role::Doctor);
    let joined = narutalk_core::time::format_rfc3339(&kim.date_joined);
    let minute = kim.date_joined.format("%Y-%m-%d %H:%M").to_string();

    let table = stdout_of(&mut env.run(&["user", "list"]));
    let json = json_of(&mut env.run(&["user", "list", "--json"]));

    assert_eq!(
        table,
        format!(
            "ID  EMAIL            USERNAME  ROLE    DEPARTMENT  VERIFIED  ACTIVE  JOINED            LAST LOGIN\n\
             1   kim@example.com  kim       doctor              no        yes     {minute}  never\n"
        )
    );
    assert_eq!(
        json,
        json!([{
            "id": 1, "username": "kim", "email": "kim@example.com", "role": "doctor",
            "department": "", "is_verified": false, "is_active": true,
            "date_joined": joined, "last_login": null, "tokens_revoked_at": null,
        }])
    );
}

#[test]
fn show_finds_a_user_by_id_or_email_and_counts_their_sessions() {
    let env = Env::new();
    let kim = env.user("kim", Role::Doctor);
    env.session(&kim, "Headache", Category::Medical);

    let by_email = json_of(&mut env.run(&["user", "show", "KIM@example.com", "--json"]));
    let by_id = json_of(&mut env.run(&["user", "show", "1", "--json"]));

    assert_eq!(by_email, by_id);
    assert_eq!(
        (&by_email["sessions"], &by_email["messages"]),
        (&json!(1), &json!(2))
    );
    let table = stdout_of(&mut env.run(&["user", "show", "1"]));
    assert!(
        table.starts_with("id              1\nemail           kim@example.com\n"),
        "{table}"
    );
    assert!(
        table.ends_with("sessions        1\nmessages        2\n"),
        "{table}"
    );
}

#[test]
fn every_command_naming_an_unknown_user_fails_with_one_line() {
    let env = Env::new();
    for key in ["ghost@example.com", "42"] {
        let commands: Vec<Vec<&str>> = vec![
            vec!["user", "show", key],
            vec!["user", "set-role", key, "admin"],
            vec!["user", "verify", key],
            vec!["user", "unverify", key],
            vec!["user", "activate", key],
            vec!["user", "deactivate", key],
            vec!["user", "logout-all", key],
            vec!["user", "reset-password", key, "--password-stdin"],
            vec!["user", "delete", key, "--yes"],
            vec!["session", "list", "--user", key],
            vec!["session", "export", "--user", key],
        ];
        for args in commands {
            env.run(&args)
                .write_stdin(format!("{NEW_PASSWORD}\n"))
                .assert()
                .code(1)
                .stdout("")
                .stderr(error_line(&format!("No user {key}.")));
        }
    }
}

#[test]
fn role_verification_and_activation_change_and_say_so() {
    let env = Env::new();
    env.user("kim", Role::User);
    let steps: &[(&[&str], &str)] = &[
        (
            &["user", "set-role", "kim@example.com", "doctor"],
            "User 1 (kim@example.com) has the role doctor.\n",
        ),
        (
            &["user", "verify", "kim@example.com"],
            "User 1 (kim@example.com) is verified.\n",
        ),
        (
            &["user", "verify", "1"],
            "User 1 (kim@example.com) is verified.\n",
        ),
        (
            &["user", "unverify", "1"],
            "User 1 (kim@example.com) is not verified.\n",
        ),
        (
            &["user", "deactivate", "1"],
            "User 1 (kim@example.com) is deactivated; every token it held is revoked.\n",
        ),
        (
            &["user", "activate", "1"],
            "User 1 (kim@example.com) is active.\n",
        ),
        (
            &["user", "verify", "1"],
            "User 1 (kim@example.com) is verified.\n",
        ),
    ];
    for (args, stdout) in steps {
        env.run(args).assert().success().stdout(*stdout).stderr("");
    }
    let kim = env.core().accounts().get(UserId(1)).unwrap();
    assert_eq!(
        (kim.role, kim.is_verified, kim.is_active),
        (Role::Doctor, true, true)
    );
}

/// A login through a handle with the server's signing secret, as the server would issue.
fn server_login(env: &Env, email: &str, password: &str) -> (Narutalk, String, String) {
    let server = Narutalk::open(&env.config(), OpenMode::MustExist).unwrap();
    let login = server.accounts().login(email, password).unwrap();
    (server, login.tokens.access, login.tokens.refresh)
}

#[test]
fn deactivation_reset_and_logout_all_revoke_every_token_at_once() {
    let env = Env::new();
    env.user("kim", Role::Doctor);
    let commands: &[(&[&str], &str)] = &[
        (&["user", "logout-all", "kim@example.com"], ""),
        (
            &[
                "user",
                "reset-password",
                "kim@example.com",
                "--password-stdin",
            ],
            "quiet-meadow-9174\n",
        ),
        (&["user", "deactivate", "kim@example.com"], ""),
    ];
    let mut password = PASSWORD;
    for (args, stdin) in commands {
        // Arrange: a session of the server, in another process than the CLI.
        let (server, access, refresh) = server_login(&env, "kim@example.com", password);
        server.tokens().authenticate(&access).unwrap();

        // Act
        env.run(args).write_stdin(*stdin).assert().success();

        // Assert: both tokens are refused at once.
        assert!(
            matches!(
                server.tokens().authenticate(&access),
                Err(Error::InvalidToken(
                    TokenProblem::Blacklisted | TokenProblem::Invalid
                ))
            ),
            "{args:?} left the access token valid"
        );
        assert!(
            matches!(
                server.tokens().refresh(&refresh),
                Err(Error::InvalidToken(_))
            ),
            "{args:?} left the refresh token valid"
        );
        if !stdin.is_empty() {
            password = NEW_PASSWORD;
        }
    }
    let core = env.core();
    assert!(matches!(
        core.accounts().login("kim@example.com", NEW_PASSWORD),
        Err(Error::BadCredentials)
    ));
}

#[test]
fn a_reset_password_is_checked_against_the_rules() {
    let env = Env::new();
    env.user("kim", Role::Doctor);
    env.run(&["user", "reset-password", "1", "--password-stdin"])
        .write_stdin("kim\n")
        .assert()
        .code(1)
        .stderr(error_line(
            "Cannot reset the password of user 1 (kim@example.com): password: The password is too similar to the username. This password is too short. It must contain at least 8 characters. This password is too common.",
        ));
    env.run(&["user", "reset-password", "1"])
        .assert()
        .code(2)
        .stderr(error_line(
            "No terminal to ask for the password on; pipe it in with --password-stdin.",
        ));
    assert!(
        env.core()
            .accounts()
            .login("kim@example.com", PASSWORD)
            .is_ok()
    );
}

#[test]
fn delete_asks_first_refuses_without_a_terminal_and_deletes_with_yes() {
    let env = Env::new();
    let kim = env.user("kim", Role::Doctor);
    let session = env.session(&kim, "Headache", Category::Medical);

    env.run(&["user", "delete", "kim@example.com"])
        .assert()
        .code(2)
        .stdout("")
        .stderr(error_line(
            "Refusing to delete user 1 (kim@example.com) without confirmation: no terminal to ask on (add --yes).",
        ));
    assert!(env.core().accounts().get(kim.id).is_ok());

    env.run(&["user", "delete", "kim@example.com", "--yes"])
        .assert()
        .success()
        .stdout("Deleted user 1 (kim@example.com) with 1 session(s) and 2 message(s).\n")
        .stderr("");
    assert!(matches!(
        env.core().accounts().get(kim.id),
        Err(Error::NotFound)
    ));
    assert!(matches!(
        env.core().admin().session(session),
        Err(Error::NotFound)
    ));
}
