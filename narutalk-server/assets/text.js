// The page's visible text, in Korean and English. The language is the reader's choice
// (the toggle in the header, kept in localStorage), and defaults to Korean when the
// browser prefers Korean, English otherwise.

const TEXT = {
  ko: {
    title: "Narutalk 채팅",
    tagline: "병원 질문과 답변 도우미",
    language: "English",
    languageLabel: "Switch to English",
    loginHeading: "로그인",
    registerHeading: "회원가입",
    email: "이메일",
    password: "비밀번호",
    passwordConfirm: "비밀번호 확인",
    username: "사용자 이름",
    role: "역할",
    roleUser: "일반 사용자",
    roleDoctor: "의사",
    roleNurse: "간호사",
    department: "부서 (선택)",
    login: "로그인",
    register: "가입하기",
    showRegister: "계정이 없나요? 회원가입",
    showLogin: "계정이 있나요? 로그인",
    logout: "로그아웃",
    sessions: "대화 목록",
    newSession: "새 대화",
    sessionTitle: "제목",
    category: "분류",
    create: "만들기",
    cancel: "취소",
    save: "저장",
    allCategories: "모든 분류",
    medical: "의료",
    general: "일반",
    emergency: "응급",
    consultation: "상담",
    active: "보관 안 됨",
    archivedFilter: "보관됨",
    all: "전체",
    filterCategory: "분류로 거르기",
    filterArchived: "보관 여부로 거르기",
    noSessions: "대화가 없습니다.",
    moreSessions: "대화 더 보기",
    archivedMark: "보관됨",
    rename: "이름 바꾸기",
    archive: "보관",
    unarchive: "보관 해제",
    delete: "삭제",
    confirmDelete: "이 대화와 모든 메시지를 삭제할까요? 되돌릴 수 없습니다.",
    yesDelete: "삭제",
    no: "취소",
    pickSession: "대화를 고르거나 새 대화를 시작하세요.",
    loadOlder: "이전 메시지 불러오기",
    composerLabel: "메시지",
    composerHint: "Enter: 보내기 · Shift+Enter: 줄바꿈",
    send: "보내기",
    you: "나",
    assistant: "AI 도우미",
    system: "시스템",
    errorMark: "오류",
    streaming: "답변 작성 중…",
    stateConnected: "연결됨",
    stateConnecting: "연결 중…",
    stateOffline: "연결 끊김, 다시 연결합니다",
    stateIdle: "열린 대화 없음",
    dismiss: "알림 닫기",
    throttled: (s) => `요청이 너무 많습니다. ${s}초 후에 다시 시도하세요.`,
    sessionDeleted: "이 대화는 삭제되었습니다.",
    loggedOut: "로그아웃되었습니다. 다시 로그인하세요.",
    networkError: "서버에 연결할 수 없습니다. 잠시 후 다시 시도하세요.",
    serverError: "서버 오류가 났습니다. 잠시 후 다시 시도하세요.",
    unavailable: "서버가 잠시 바쁩니다. 잠시 후 다시 시도하세요.",
    sendFailed: "메시지를 보내지 못했습니다.",
    sendInterrupted: "연결이 끊겨 메시지가 전달되지 않았을 수 있습니다. 입력창에 되돌려 놓았습니다.",
  },
  en: {
    title: "Narutalk chat",
    tagline: "Questions and answers for the hospital",
    language: "한국어",
    languageLabel: "한국어로 보기",
    loginHeading: "Log in",
    registerHeading: "Register",
    email: "Email",
    password: "Password",
    passwordConfirm: "Confirm password",
    username: "Username",
    role: "Role",
    roleUser: "User",
    roleDoctor: "Doctor",
    roleNurse: "Nurse",
    department: "Department (optional)",
    login: "Log in",
    register: "Register",
    showRegister: "No account? Register",
    showLogin: "Have an account? Log in",
    logout: "Log out",
    sessions: "Conversations",
    newSession: "New conversation",
    sessionTitle: "Title",
    category: "Category",
    create: "Create",
    cancel: "Cancel",
    save: "Save",
    allCategories: "All categories",
    medical: "Medical",
    general: "General",
    emergency: "Emergency",
    consultation: "Consultation",
    active: "Not archived",
    archivedFilter: "Archived",
    all: "All",
    filterCategory: "Filter by category",
    filterArchived: "Filter by archive state",
    noSessions: "No conversations.",
    moreSessions: "More conversations",
    archivedMark: "archived",
    rename: "Rename",
    archive: "Archive",
    unarchive: "Unarchive",
    delete: "Delete",
    confirmDelete: "Delete this conversation and all its messages? This cannot be undone.",
    yesDelete: "Delete",
    no: "Cancel",
    pickSession: "Pick a conversation or start a new one.",
    loadOlder: "Load older messages",
    composerLabel: "Message",
    composerHint: "Enter sends · Shift+Enter adds a line",
    send: "Send",
    you: "You",
    assistant: "Assistant",
    system: "System",
    errorMark: "Error",
    streaming: "Writing a reply…",
    stateConnected: "Connected",
    stateConnecting: "Connecting…",
    stateOffline: "Offline, reconnecting",
    stateIdle: "No conversation open",
    dismiss: "Dismiss the notice",
    throttled: (s) => `Too many requests. Try again in ${s} s.`,
    sessionDeleted: "This conversation was deleted.",
    loggedOut: "You were logged out. Please log in again.",
    networkError: "The server cannot be reached. Try again in a moment.",
    serverError: "The server had an error. Try again in a moment.",
    unavailable: "The server is busy. Try again in a moment.",
    sendFailed: "The message was not sent.",
    sendInterrupted: "The connection dropped before the message was confirmed; it is back in the box.",
  },
};

const LANGUAGE_KEY = "narutalk.lang";

function initialLanguage() {
  const chosen = localStorage.getItem(LANGUAGE_KEY);
  if (chosen === "ko" || chosen === "en") return chosen;
  const preferred = navigator.languages && navigator.languages.length
    ? navigator.languages
    : [navigator.language || "en"];
  return preferred.some((tag) => tag.toLowerCase().startsWith("ko")) ? "ko" : "en";
}

let language = initialLanguage();

/** The current language, `ko` or `en`. */
export function currentLanguage() {
  return language;
}

/** Switches the language and remembers the choice. */
export function setLanguage(next) {
  language = next === "ko" ? "ko" : "en";
  localStorage.setItem(LANGUAGE_KEY, language);
}

/** The text under `key` in the current language; functions are called with `args`. */
export function t(key, ...args) {
  const entry = TEXT[language][key] ?? TEXT.en[key] ?? key;
  return typeof entry === "function" ? entry(...args) : entry;
}

/** Fills every `[data-t]` element's text and every `[data-t-label]`'s aria-label. */
export function translatePage(root = document) {
  document.documentElement.lang = language;
  document.title = t("title");
  for (const element of root.querySelectorAll("[data-t]")) {
    element.textContent = t(element.dataset.t);
  }
  for (const element of root.querySelectorAll("[data-t-label]")) {
    element.setAttribute("aria-label", t(element.dataset.tLabel));
  }
}
