//! A message over the user's message limit: the page says so, with the wait the server
//! gave (the socket's error frame carries `retry_after`; a REST 429 its `Retry-After`).

use serde_json::Value;

use crate::browser::Browser;
use crate::helpers::stored;
use crate::page::{Site, open_logged_in, open_session, send, wait_until_page_shows_stored};

/// With a limit of one message a minute, the second message is refused: `#notice` says
/// `throttled`, its `data-retry-after` is the number of seconds the server answered (a
/// positive integer), its text shows that number, and nothing more is stored.
#[tokio::test]
async fn a_throttled_message_shows_the_wait_the_server_gave() {
    let Some(browser) = Browser::start("a_throttled_message_shows_the_wait_the_server_gave").await
    else {
        return;
    };
    let site = Site::start_with(|config| config.message_throttle_per_minute = 1).await;
    let kim = site.app.account("kim").await;
    let session = site.app.session(&kim, "천천히").await;
    open_logged_in(&browser, &site, &kim).await;
    open_session(&browser, &session).await;
    send(&browser, "첫 질문").await;
    wait_until_page_shows_stored(&browser, &site, &kim, &session, 2).await;

    // A minute refills the quota: on a machine slow enough for a minute to pass between
    // two messages, the second is answered and another is sent.
    let mut stored_count = 2;
    let notice = loop {
        send(&browser, "바로 다음 질문").await;
        let outcome = browser
            .wait_for(
                "a throttled notice or the message's reply",
                "const n = document.querySelector('#notice'); \
                 if (n && n.dataset.kind === 'throttled') \
                     return {retry_after: n.dataset.retryAfter, text: n.textContent}; \
                 const replies = document.querySelectorAll('#messages li.message[data-sender=ai]'); \
                 return replies.length * 2 > arguments[0] ? {answered: true} : null;",
                vec![stored_count.into()],
            )
            .await;
        if outcome.get("answered").is_none() {
            break outcome;
        }
        stored_count += 2;
        assert!(
            stored_count <= 8,
            "four messages in a row were not throttled"
        );
    };

    let retry_after = notice["retry_after"].as_str().unwrap_or_default();
    let seconds: u64 = retry_after
        .parse()
        .unwrap_or_else(|_| panic!("data-retry-after is {retry_after:?}"));
    assert!((1..=60).contains(&seconds), "data-retry-after is {seconds}");
    assert_eq!(
        Some(seconds),
        server_retry_after(&browser.network_events().await),
        "the notice's wait is the server's"
    );
    let text = notice["text"].as_str().unwrap();
    assert!(
        text.contains(&seconds.to_string()),
        "the notice {text:?} does not show {seconds}"
    );
    assert_eq!(stored(&site.app, &kim, &session).await.len(), stored_count);
}

/// The wait of the last throttled answer the browser received: a socket error frame's
/// `retry_after`, or a 429 response's `Retry-After`.
fn server_retry_after(events: &[Value]) -> Option<u64> {
    events
        .iter()
        .rev()
        .find_map(|event| match event["method"].as_str()? {
            "Network.webSocketFrameReceived" => {
                let payload = event["params"]["response"]["payloadData"].as_str()?;
                let frame: Value = serde_json::from_str(payload).ok()?;
                (frame["type"] == "error")
                    .then(|| frame["retry_after"].as_u64())
                    .flatten()
            }
            "Network.responseReceived" => {
                let response = &event["params"]["response"];
                (response["status"] == 429)
                    .then(|| {
                        response["headers"]
                            .as_object()?
                            .iter()
                            .find(|(name, _)| name.eq_ignore_ascii_case("retry-after"))?
                            .1
                            .as_str()?
                            .parse()
                            .ok()
                    })
                    .flatten()
            }
            _ => None,
        })
}
