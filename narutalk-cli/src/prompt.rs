//! Questions to the administrator: new passwords (a hidden prompt on a terminal, or
//! standard input with `--password-stdin`, never a flag value) and confirmations of
//! deletions (a terminal question, or `--yes`). Without a terminal and without the flag,
//! a command refuses with a usage error rather than guessing.

use std::io::{IsTerminal, Read};

use anyhow::{Context, bail};
use narutalk_core::accounts::policy;

use crate::UsageError;

/// True when a person can be asked: standard input and standard error are terminals.
pub fn interactive() -> bool {
    std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

/// A new password for the account `username` / `email`: from standard input with
/// `from_stdin` (one line; its final line break is not part of it), otherwise typed twice
/// at a hidden prompt that explains every broken password rule and asks again.
pub fn new_password(from_stdin: bool, username: &str, email: &str) -> anyhow::Result<String> {
    if from_stdin {
        return password_from_stdin();
    }
    if !interactive() {
        return Err(UsageError(
            "No terminal to ask for the password on; pipe it in with --password-stdin".into(),
        )
        .into());
    }
    let (username, email) = (username.to_owned(), email.to_owned());
    dialoguer::Password::new()
        .with_prompt(format!("New password for {email}"))
        .with_confirmation("Type it again", "The two passwords differ; try again.")
        .validate_with(move |password: &String| {
            let problems = policy::password_problems(password, Some(&username), Some(&email));
            match problems.is_empty() {
                true => Ok(()),
                false => Err(problems.join(" ")),
            }
        })
        .interact()
        .context("Cannot read the password from the terminal")
}

/// Goes on when `yes` was given or the administrator answers yes to `question` on a
/// terminal; otherwise fails, naming the `action` (`delete user 3 (kim@example.com)`) not
/// taken.
pub fn confirm(question: &str, yes: bool, action: &str) -> anyhow::Result<()> {
    if yes {
        return Ok(());
    }
    if !interactive() {
        return Err(UsageError(format!(
            "Refusing to {action} without confirmation: no terminal to ask on (add --yes)"
        ))
        .into());
    }
    let answer = dialoguer::Confirm::new()
        .with_prompt(question)
        .default(false)
        .interact()
        .context("Cannot read the answer from the terminal")?;
    if !answer {
        bail!("Cancelled; did not {action}");
    }
    Ok(())
}

fn password_from_stdin() -> anyhow::Result<String> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("Cannot read the password from standard input")?;
    let password = match text.strip_suffix('\n') {
        Some(line) => line.strip_suffix('\r').unwrap_or(line),
        None => &text,
    };
    if password.is_empty() {
        bail!("No password on standard input (--password-stdin reads it from there)");
    }
    if password.contains(['\n', '\r']) {
        bail!("Standard input holds more than one line; --password-stdin takes the password alone");
    }
    Ok(password.to_owned())
}
