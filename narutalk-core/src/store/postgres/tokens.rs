//! [`TokenStore`] on PostgreSQL: the `refresh_tokens` table and the users' revocation
//! times.
//!
//! A use of a refresh token (rotation or logout) locks its user's row first
//! ([`accounts::lock_user`]), as every write of a user's tokens does: of two servers
//! presenting one token at once, the second waits, then finds it used (reuse, which
//! revokes its family), and a rotation never interleaves with a revocation of the user.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use super::{PostgresStore, Tx, accounts};
use crate::accounts::UserId;
use crate::error::{Error, TokenProblem};
use crate::store::outbox;
use crate::store::outbox::Kind;
use crate::store::{
    Audit, FamilyEnd, NewRefresh, PresentedRefresh, RefreshUse, RevocationFacts, TokenHolder,
    TokenLifetimes, TokenStore, UserStamp,
};
use crate::tokens::Family;

impl TokenStore for PostgresStore {
    fn token_holder(
        &self,
        user_id: UserId,
        family: Option<Family>,
    ) -> Result<Option<TokenHolder>, Error> {
        self.read(|tx| {
            let Some(user) = accounts::user_by_id(tx, user_id)? else {
                return Ok(None);
            };
            let family_revoked = match family {
                Some(family) => family_is_revoked(tx, &family.to_string())?,
                None => false,
            };
            Ok(Some(TokenHolder {
                user,
                family_revoked,
            }))
        })
    }

    fn revocation_facts(
        &self,
        users: &[UserId],
        families: &[Family],
    ) -> Result<RevocationFacts, Error> {
        self.read(|tx| {
            let mut stamps = HashMap::with_capacity(users.len());
            for &user_id in users {
                stamps.insert(user_id, user_stamp(tx, user_id)?);
            }
            let mut revoked_families = HashSet::new();
            for &family in families {
                if family_is_revoked(tx, &family.to_string())? {
                    revoked_families.insert(family);
                }
            }
            Ok(RevocationFacts {
                users: stamps,
                revoked_families,
            })
        })
    }

    fn rotate_refresh(
        &self,
        presented: &PresentedRefresh<'_>,
        next_jti: &str,
        lifetimes: TokenLifetimes,
        now_seconds: i64,
        audit: &Audit,
    ) -> Result<RefreshUse, Error> {
        // A refusal commits too: reuse has revoked the family.
        self.write(Instant::now(), |tx| {
            let (row, stamp) = match self.live_refresh_row(tx, presented, now_seconds, audit)? {
                Ok(live) => live,
                Err((problem, ended)) => return Ok(RefreshUse::Refused { problem, ended }),
            };
            tx.execute(
                "UPDATE refresh_tokens SET used_at = $1 WHERE jti = $2",
                &[&now_seconds, &presented.jti],
            )?;
            let issued_at = crate::tokens::issued_at(now_seconds, stamp.tokens_revoked_at);
            let next = NewRefresh {
                jti: next_jti.to_owned(),
                family: row.family,
            };
            insert_refresh_row(
                tx,
                &next,
                presented.user_id,
                issued_at,
                issued_at.saturating_add(lifetimes.refresh_seconds),
            )?;
            Ok(RefreshUse::Rotated {
                issued_at,
                family: next.family,
            })
        })
    }

    fn end_family(
        &self,
        presented: &PresentedRefresh<'_>,
        now_seconds: i64,
        audit: &Audit,
    ) -> Result<FamilyEnd, Error> {
        // A refusal commits too: reuse has revoked the family.
        self.write(Instant::now(), |tx| {
            let (row, _) = match self.live_refresh_row(tx, presented, now_seconds, audit)? {
                Ok(live) => live,
                Err((problem, ended)) => {
                    return Ok(FamilyEnd {
                        refused: Some(problem),
                        ended,
                    });
                }
            };
            self.end_family_row(tx, presented.user_id, &row.family, now_seconds, audit)?;
            Ok(FamilyEnd {
                refused: None,
                ended: Some(row.family),
            })
        })
    }

    fn purge_expired(
        &self,
        now_seconds: i64,
        lifetimes: TokenLifetimes,
        limit: u32,
    ) -> Result<usize, Error> {
        self.write(Instant::now(), |tx| {
            purge_expired(tx, now_seconds, lifetimes.access_seconds, limit)
        })
    }
}

/// Why a presented refresh token is refused, and the family the refusal ended (reuse).
type Refusal = (TokenProblem, Option<String>);

impl PostgresStore {
    /// The stored row of a presented refresh token and its user's stamp, when the token may
    /// still be used; otherwise why it is refused, after recording what the refusal
    /// records: a token presented again after rotation is reuse, and revokes every token of
    /// its login's family (recorded in the outbox with `audit`). Locks the row of the
    /// user the token claims first, so that its row and the user's are judged as they are
    /// until the transaction ends.
    fn live_refresh_row(
        &self,
        tx: &mut Tx<'_>,
        presented: &PresentedRefresh<'_>,
        now_seconds: i64,
        audit: &Audit,
    ) -> Result<Result<(RefreshRow, UserStamp), Refusal>, Error> {
        // No user, no row of theirs (they cascade): the token is judged invalid below.
        accounts::lock_user(tx, presented.user_id)?;
        let row = match refresh_row(tx, presented.jti)? {
            Some(row) if row.user_id == presented.user_id => row,
            _ => return Ok(Err((TokenProblem::Invalid, None))),
        };
        if row.used_at.is_some() {
            self.end_family_row(tx, row.user_id, &row.family, now_seconds, audit)?;
            return Ok(Err((TokenProblem::Blacklisted, Some(row.family))));
        }
        if row.revoked_at.is_some() {
            return Ok(Err((TokenProblem::Blacklisted, None)));
        }
        let Some(stamp) = user_stamp(tx, presented.user_id)? else {
            return Ok(Err((TokenProblem::Invalid, None)));
        };
        if !stamp.is_active || presented.issued_at <= stamp.tokens_revoked_at {
            return Ok(Err((TokenProblem::Blacklisted, None)));
        }
        Ok(Ok((row, stamp)))
    }

    /// Revokes a login family ([`revoke_family`]) and records it in the outbox.
    fn end_family_row(
        &self,
        tx: &mut Tx<'_>,
        user: UserId,
        family: &str,
        now_seconds: i64,
        audit: &Audit,
    ) -> Result<(), Error> {
        revoke_family(tx, family, now_seconds)?;
        self.record(
            tx,
            &outbox::Row {
                kind: Kind::LoginEnded,
                session: None,
                seq: None,
                user: Some(user),
                payload: serde_json::json!({ "family": family }),
                audit,
            },
        )
    }
}

/// Revokes every refresh token of a login family, and with them the family's access tokens
/// (see [`family_is_revoked`]).
fn revoke_family(tx: &mut Tx<'_>, family: &str, now_seconds: i64) -> Result<(), Error> {
    tx.execute(
        "UPDATE refresh_tokens SET revoked_at = $1 WHERE family = $2 AND revoked_at IS NULL",
        &[&now_seconds, &family],
    )?;
    Ok(())
}

/// Whether a login family is revoked: a refresh token of it was reused or logged out (or
/// every token of its user was revoked). A family whose rows were all purged (expired)
/// counts as not revoked: its access tokens have expired too (see [`purge_expired`]).
fn family_is_revoked(tx: &mut Tx<'_>, family: &str) -> Result<bool, Error> {
    Ok(tx
        .query_opt(
            "SELECT 1 FROM refresh_tokens WHERE family = $1 AND revoked_at IS NOT NULL LIMIT 1",
            &[&family],
        )?
        .is_some())
}

struct RefreshRow {
    user_id: UserId,
    family: String,
    used_at: Option<i64>,
    revoked_at: Option<i64>,
}

fn refresh_row(tx: &mut Tx<'_>, jti: &str) -> Result<Option<RefreshRow>, Error> {
    Ok(tx
        .query_opt(
            "SELECT user_id, family, used_at, revoked_at FROM refresh_tokens WHERE jti = $1",
            &[&jti],
        )?
        .map(|row| RefreshRow {
            user_id: UserId(row.get(0)),
            family: row.get(1),
            used_at: row.get(2),
            revoked_at: row.get(3),
        }))
}

fn user_stamp(tx: &mut Tx<'_>, user_id: UserId) -> Result<Option<UserStamp>, Error> {
    Ok(tx
        .query_opt(
            "SELECT is_active, tokens_revoked_at FROM users WHERE id = $1",
            &[&user_id.0],
        )?
        .map(|row| UserStamp {
            is_active: row.get(0),
            tokens_revoked_at: row.get(1),
        }))
}

/// Stores a refresh token of `user_id`, issued at `issued_at` and expiring at
/// `expires_at` (whole seconds since the epoch).
pub(super) fn insert_refresh_row(
    tx: &mut Tx<'_>,
    refresh: &NewRefresh,
    user_id: UserId,
    issued_at: i64,
    expires_at: i64,
) -> Result<(), Error> {
    tx.execute(
        "INSERT INTO refresh_tokens (jti, user_id, family, issued_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5)",
        &[
            &refresh.jti,
            &user_id.0,
            &refresh.family,
            &issued_at,
            &expires_at,
        ],
    )?;
    Ok(())
}

/// Deletes up to `limit` refresh-token rows that expired, and whose access token expired
/// too: a row is what tells that its family is revoked ([`family_is_revoked`]), so it
/// stays while the access token issued with it may be presented (with the default
/// lifetimes the refresh token always lives longer). Rows another transaction holds are
/// skipped (two purges at once delete different rows rather than wait for each other).
pub(super) fn purge_expired(
    tx: &mut Tx<'_>,
    now_seconds: i64,
    access_seconds: i64,
    limit: u32,
) -> Result<usize, Error> {
    let deleted = tx.execute(
        "DELETE FROM refresh_tokens WHERE jti IN \
         (SELECT jti FROM refresh_tokens WHERE expires_at < $1 AND issued_at + $2 < $1 \
          LIMIT $3 FOR UPDATE SKIP LOCKED)",
        &[&now_seconds, &access_seconds, &i64::from(limit)],
    )?;
    Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Barrier;

    use super::super::accounts::tests::{
        LIFETIMES, account, at, audit, device, login, pg_outbox, pg_tokens, sqlite_outbox,
        sqlite_tokens, twins, until_waiting,
    };
    use super::super::testing;
    use crate::accounts::{Role, UserId};
    use crate::config::Secret;
    use crate::error::TokenProblem;
    use crate::events::Actor;
    use crate::store::{
        AccountStore, LoginRecord, PresentedRefresh, RefreshUse, TokenStore, UserChange,
    };
    use crate::tokens::{Family, TokenKeys};

    /// A login of `user` at `seconds` whose refresh token is `jti`, in a family of its own;
    /// answers the family and the token's `iat`.
    fn login_family<S: AccountStore>(
        store: &S,
        user: UserId,
        seconds: i64,
        jti: &str,
    ) -> (Family, i64) {
        let keys = TokenKeys::new(&Secret::new("0123456789abcdef0123456789abcdef"), 5, 1).unwrap();
        let (mut refresh, family) = keys.new_refresh();
        refresh.jti = jti.to_owned();
        let recorded = store
            .record_login(&LoginRecord {
                user_id: user,
                verified_hash: "hash-of-kim",
                now: at(seconds),
                refresh: &refresh,
                lifetimes: LIFETIMES,
                honoured_device: None,
                new_device: device(seconds.unsigned_abs().try_into().unwrap()),
                devices_valid_after: at(0),
            })
            .unwrap()
            .unwrap();
        (family, recorded.issued_at)
    }

    fn presented(jti: &str, user: UserId, issued_at: i64) -> PresentedRefresh<'_> {
        PresentedRefresh {
            jti,
            user_id: user,
            issued_at,
        }
    }

    /// Every token method, with the answers in order.
    fn token_scenario<S: AccountStore + TokenStore>(store: &S) -> Vec<String> {
        let mut answers = Vec::new();
        let mut say = |answer: String| answers.push(answer);
        let kim = store
            .insert_user(&account("kim", Role::User))
            .unwrap()
            .unwrap();
        let base = at(0).timestamp();
        let by_kim = |seconds| audit(Actor::User(kim.id), seconds);
        let (f1, iat1) = login_family(store, kim.id, 10, "r1");
        let holder = |family| {
            store
                .token_holder(kim.id, family)
                .map(|h| h.map(|h| (h.user, h.family_revoked)))
        };
        say(format!(
            "{:?} {:?} {:?}",
            holder(Some(f1)),
            holder(None),
            store
                .token_holder(UserId(999), Some(f1))
                .map(|h| h.is_none()),
        ));
        // Rotation, then reuse of the rotated token, then the revoked next one.
        let now = base + 20;
        say(format!(
            "{:?}",
            store.rotate_refresh(
                &presented("r1", kim.id, iat1),
                "r2",
                LIFETIMES,
                now,
                &by_kim(20)
            )
        ));
        say(format!(
            "{:?}",
            store.rotate_refresh(
                &presented("r1", kim.id, iat1),
                "r3",
                LIFETIMES,
                now,
                &by_kim(21)
            )
        ));
        say(format!(
            "{:?}",
            store.rotate_refresh(
                &presented("r2", kim.id, now),
                "r4",
                LIFETIMES,
                now,
                &by_kim(22)
            )
        ));
        say(format!("{:?}", holder(Some(f1))));
        // Unknown and foreign tokens.
        say(format!(
            "{:?} {:?}",
            store.rotate_refresh(
                &presented("nope", kim.id, now),
                "x",
                LIFETIMES,
                now,
                &by_kim(23)
            ),
            store.rotate_refresh(
                &presented("r2", UserId(999), now),
                "x",
                LIFETIMES,
                now,
                &by_kim(23)
            ),
        ));
        // Logout, twice.
        let (f2, iat2) = login_family(store, kim.id, 30, "g1");
        say(format!(
            "{:?} {:?} {:?}",
            store.end_family(&presented("g1", kim.id, iat2), base + 31, &by_kim(31)),
            store.end_family(&presented("g1", kim.id, iat2), base + 32, &by_kim(32)),
            store.end_family(&presented("nope", kim.id, iat2), base + 32, &by_kim(32)),
        ));
        // An inactive user's tokens, then tokens issued before a revocation.
        let (f3, iat3) = login_family(store, kim.id, 40, "h1");
        let admin = audit(Actor::Administrator, 41);
        store
            .change_user(kim.id, UserChange::Active(false), &admin)
            .unwrap();
        let (_, _) = (f3, iat3);
        say(format!(
            "{:?}",
            store.rotate_refresh(
                &presented("h1", kim.id, iat3),
                "h2",
                LIFETIMES,
                base + 42,
                &by_kim(42)
            )
        ));
        store
            .change_user(kim.id, UserChange::Active(true), &admin)
            .unwrap();
        // Logged in in the second of the revocation: issued one second later.
        let (f4, iat4) = login_family(store, kim.id, 41, "i1");
        say(format!("{iat4} {:?}", holder(Some(f4))));
        say(format!(
            "{:?} {:?}",
            store.rotate_refresh(
                &presented("i1", kim.id, iat4 - 1),
                "i2",
                LIFETIMES,
                base + 43,
                &by_kim(43)
            ),
            store.rotate_refresh(
                &presented("i1", kim.id, iat4),
                "i3",
                LIFETIMES,
                base + 43,
                &by_kim(43)
            ),
        ));
        let keys = TokenKeys::new(&Secret::new("0123456789abcdef0123456789abcdef"), 5, 1).unwrap();
        let (_, unknown) = keys.new_refresh();
        let facts = store
            .revocation_facts(&[kim.id, UserId(999)], &[f1, f2, f3, f4, unknown])
            .unwrap();
        let mut users: Vec<_> = facts
            .users
            .into_iter()
            .map(|(u, s)| format!("{u:?}={s:?}"))
            .collect();
        users.sort();
        let revoked = [f1, f2, f3, f4, unknown].map(|f| facts.revoked_families.contains(&f));
        say(format!("{users:?} {revoked:?}"));
        // Purges: nothing expired yet, then two, then the rest.
        let far = base + 10 * 86_400;
        say(format!(
            "{:?} {:?} {:?} {:?}",
            store.purge_expired(base + 100, LIFETIMES, 10),
            store.purge_expired(far, LIFETIMES, 2),
            store.purge_expired(far, LIFETIMES, 100),
            store.purge_expired(far, LIFETIMES, 100),
        ));
        answers
    }

    /// `text` with every run of 32 hex digits (a family) replaced by `<family>`.
    fn blanked(text: &str) -> String {
        let mut out = String::new();
        let mut run = String::new();
        for c in text.chars().chain(std::iter::once(' ')) {
            if c.is_ascii_hexdigit() {
                run.push(c);
                continue;
            }
            if run.len() == 32 {
                out.push_str("<family>");
            } else {
                out.push_str(&run);
            }
            run.clear();
            out.push(c);
        }
        out.pop();
        out
    }

    #[test]
    fn every_token_method_answers_and_writes_as_on_sqlite() {
        let Some(twins) = twins("pg_tokens_scenario") else {
            return;
        };
        // Families are random: compare the answers with them blanked.
        let blank =
            |answers: Vec<String>| -> Vec<String> { answers.iter().map(|a| blanked(a)).collect() };
        let sqlite = blank(token_scenario(&twins.sqlite));
        let pg = blank(token_scenario(&twins.pg));
        for (n, (s, p)) in sqlite.iter().zip(&pg).enumerate() {
            assert_eq!(s, p, "answer {n}");
        }
        assert_eq!(sqlite.len(), pg.len());
        // The tables and outbox, with each family replaced by its first token.
        let (sqlite_refresh, sqlite_devices) = sqlite_tokens(&twins.path);
        let (pg_refresh, pg_devices) = pg_tokens(&twins.pg);
        let shape = |rows: Vec<super::super::accounts::tests::RefreshRow>| {
            rows.into_iter()
                .map(|r| (r.0, r.1, r.3, r.4, r.5, r.6))
                .collect::<Vec<_>>()
        };
        assert_eq!(shape(sqlite_refresh), shape(pg_refresh));
        assert_eq!(sqlite_devices, pg_devices);
        let outbox_shape = |rows: Vec<super::super::accounts::tests::OutboxRow>| {
            rows.into_iter()
                .map(|r| (r.0, r.3, r.4, r.5, blanked(&r.6)))
                .collect::<Vec<_>>()
        };
        let pg_rows = pg_outbox(&twins.pg);
        assert_eq!(
            outbox_shape(sqlite_outbox(&twins.path)),
            outbox_shape(pg_rows.clone())
        );
        let kinds: Vec<&str> = pg_rows.iter().map(|r| r.0.as_str()).collect();
        assert_eq!(kinds, ["login_ended", "login_ended", "user_revoked"]);
        assert!(
            pg[2].contains("Blacklisted") && pg[2].contains("ended: Some"),
            "{}",
            pg[2]
        );
    }

    #[test]
    fn of_many_rotations_of_one_refresh_token_at_once_one_succeeds_and_the_rest_are_reuse() {
        let Some((store, _)) = testing::store("pg_rotation_race") else {
            return;
        };
        let kim = store
            .insert_user(&account("kim", Role::User))
            .unwrap()
            .unwrap();
        login(&store, kim.id, "hash-of-kim", 10, "r0", None, device(1));
        let base = at(0).timestamp();
        const N: usize = 8;
        // Another transaction holds the token's row: every rotation reads it unused before
        // it can write it, unless the user's lock queues them first.
        let (locked, go) = (Barrier::new(2), Barrier::new(2));
        let answers: Vec<RefreshUse> = std::thread::scope(|scope| {
            scope.spawn(|| {
                store
                    .write(std::time::Instant::now(), |tx| {
                        tx.execute(
                            "SELECT 1 FROM refresh_tokens WHERE jti = 'r0' FOR UPDATE",
                            &[],
                        )?;
                        locked.wait();
                        go.wait();
                        Ok(())
                    })
                    .unwrap();
            });
            locked.wait();
            let threads: Vec<_> = (0..N)
                .map(|n| {
                    let store = &store;
                    scope.spawn(move || {
                        store
                            .rotate_refresh(
                                &presented("r0", kim.id, base + 10),
                                &format!("next{n}"),
                                LIFETIMES,
                                base + 20,
                                &audit(Actor::User(kim.id), 20),
                            )
                            .unwrap()
                    })
                })
                .collect();
            until_waiting(&store, i64::try_from(N).unwrap());
            go.wait();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let rotated = answers
            .iter()
            .filter(|a| matches!(a, RefreshUse::Rotated { .. }))
            .count();
        let reused = answers
            .iter()
            .filter(|a| {
                matches!(a, RefreshUse::Refused { problem: TokenProblem::Blacklisted, ended: Some(f) }
                    if f == "family-of-r0")
            })
            .count();
        assert_eq!((rotated, reused), (1, N - 1), "{answers:?}");
        // The reuse revoked the family, the rotated token included.
        let (refresh, _) = pg_tokens(&store);
        assert_eq!(refresh.len(), 2);
        assert!(refresh.iter().all(|row| row.6.is_some()), "{refresh:?}");
        assert_eq!(pg_outbox(&store).len(), N - 1);
    }
}
