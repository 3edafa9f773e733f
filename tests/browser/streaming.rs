//! A streamed reply (the `openai` backend against the fake OpenAI-compatible model) as
//! the page shows it: in pieces while it streams, then replaced in place by the stored
//! message.

use crate::browser::Browser;
use crate::fake_ai::{Answer, FakeService, Gate, OPENAI_DONE, openai_delta, openai_finish};
use crate::helpers::stored;
use crate::page::{
    Site, as_shown, open_logged_in, open_session, send, wait_for_messages,
    wait_until_page_shows_stored,
};

/// The model sends its first piece and then waits for the test: meanwhile the page shows
/// a streaming reply (`data-streaming`, under the id the reply will be stored with)
/// holding exactly that piece. Once the rest arrives, the stored reply takes its place
/// (same id, same position, no longer streaming), and nothing else is shown.
#[tokio::test]
async fn a_streamed_reply_appears_in_pieces_and_ends_as_the_stored_message() {
    let Some(browser) =
        Browser::start("a_streamed_reply_appears_in_pieces_and_ends_as_the_stored_message").await
    else {
        return;
    };
    let gate = Gate::new();
    let model = FakeService::start({
        let gate = gate.clone();
        move |_| {
            Answer::stream()
                .chunk(&openai_delta("물을 충분히 "))
                .wait(&gate)
                .chunk(&openai_delta("마시고 "))
                .chunk(&openai_delta("쉬세요."))
                .chunk(&openai_finish("stop"))
                .chunk(OPENAI_DONE)
                .end()
        }
    });
    let site = Site::with_model(&model).await;
    let kim = site.app.account("kim").await;
    let session = site.app.session(&kim, "두통").await;
    open_logged_in(&browser, &site, &kim).await;
    open_session(&browser, &session).await;

    send(&browser, "두통이 있어요").await;
    let streaming = wait_for_messages(&browser, "the first piece of the reply", |shown| {
        shown.len() == 2 && shown[1].streaming
    })
    .await;
    let stored_so_far = stored(&site.app, &kim, &session).await;
    assert_eq!(
        stored_so_far.len(),
        1,
        "the reply is not stored before it ends"
    );
    assert_eq!(streaming[0], as_shown(&stored_so_far)[0]);
    assert_eq!(streaming[1].sender, "ai");
    assert_eq!(streaming[1].text, "물을 충분히 ");
    gate.open();

    let shown = wait_until_page_shows_stored(&browser, &site, &kim, &session, 2).await;
    assert_eq!(shown[1].id, streaming[1].id);
    assert_eq!(shown[1].text, "물을 충분히 마시고 쉬세요.");
    assert_eq!(shown[1].sender, "ai");
}
