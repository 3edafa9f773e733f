//! The README's screenshot of the page, taken by the same browser setup as the tests.
//! It writes `docs/screenshot.png`, so it runs only when asked:
//!
//! ```sh
//! cargo test --test browser -- --ignored --exact screenshot::take_the_readme_screenshot
//! ```

use std::path::Path;

use serde_json::json;

use crate::browser::{Browser, WINDOW};
use crate::fake_ai::{FakeService, openai_stream};
use crate::page::{Site, open_logged_in, open_session, wait_until_page_shows_stored};

/// Where the README takes its screenshot from.
const SCREENSHOT: &str = "docs/screenshot.png";

/// The most the screenshot may weigh, so that the repository stays light.
const MAX_BYTES: usize = 300 * 1024;

/// The conversation shown: each question and the model's answer (Korean and English,
/// as in a Korean hospital).
const CONVERSATION: [(&str, &str); 3] = [
    (
        "아침부터 두통이 있어요. What should I check first?",
        "두통이 시작된 시각과 강도(1–10), 동반 증상(발열, 구토, 시야 변화)을 먼저 확인해 주세요. \
         A sudden, severe headache needs the emergency department right away.",
    ),
    (
        "열은 없고, 타이레놀 500 mg을 두 시간 전에 먹었어요.",
        "열이 없다면 수분을 충분히 섭취하고 조용한 곳에서 쉬어 보세요. 진통제는 \
         하루 권장량을 넘기지 마세요. If the pain lasts beyond 24 hours, see a doctor.",
    ),
    (
        "Thank you. 내일 외래 예약이 있어요.",
        "좋습니다. 외래 진료 때 두통 일지(시각, 강도, 복용한 약)를 가져가시면 \
         진료에 도움이 됩니다. I hope you feel better soon.",
    ),
];

#[tokio::test]
#[ignore = "writes docs/screenshot.png; run it to take the README's screenshot again"]
async fn take_the_readme_screenshot() {
    let Some(browser) = Browser::start("take_the_readme_screenshot").await else {
        return;
    };
    let model = FakeService::start(|request| {
        let body = request.json();
        let question = body["messages"]
            .as_array()
            .and_then(|messages| messages.last())
            .and_then(|message| message["content"].as_str())
            .unwrap_or_default()
            .to_owned();
        let answer = CONVERSATION
            .iter()
            .find(|(asked, _)| *asked == question)
            .map_or("…", |(_, answer)| answer);
        let pieces: Vec<&str> = answer.split_inclusive(' ').collect();
        openai_stream(&pieces)
    });
    let site = Site::with_model(&model).await;
    let kim = site.app.account("kim_doctor").await;
    site.app
        .session_in(&kim, "Ward round notes", "general")
        .await;
    site.app
        .session_in(&kim, "응급실 인수인계", "emergency")
        .await;
    let session = site.app.session_in(&kim, "두통 상담", "medical").await;
    for (question, _) in CONVERSATION {
        site.app.say(&kim, &session, question).await;
    }
    // The page's viewport is the whole desktop size (a headless window's frame takes part
    // of the window otherwise).
    let (width, height) = WINDOW;
    browser
        .cdp(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
    open_logged_in(&browser, &site, &kim).await;
    open_session(&browser, &session).await;
    wait_until_page_shows_stored(&browser, &site, &kim, &session, 2 * CONVERSATION.len()).await;
    // No caret blinking in the picture.
    browser
        .js(
            "document.activeElement && document.activeElement.blur(); return true;",
            vec![],
        )
        .await;

    let png = browser.screenshot().await;

    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    assert!(
        png.len() <= MAX_BYTES,
        "the screenshot weighs {} bytes, more than {MAX_BYTES}",
        png.len()
    );
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(SCREENSHOT);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &png).unwrap();
    println!("wrote {} ({} bytes)", path.display(), png.len());
}
