// A small Markdown subset rendered straight to DOM nodes: paragraphs, line breaks, headings as bold
// lines, **bold**, *italic*, `code`, numbered and bulleted lists, and http(s) links.
// Answers come from a knowledge base anyone with admin rights can edit and from a model that
// repeats what it is shown, so their text only ever becomes text nodes: no innerHTML anywhere.

const ORDERED = /^\s*(\d{1,4})(?:[.)]\s+|、\s*)(.*)$/; // "1. x", "1) x", "1、x"; not "1.5元"
const BULLET = /^\s*[-*+•·]\s+(.*)$/;
const HEADING = /^\s{0,3}#{1,6}\s+(.*)$/;
// One alternative per inline form; the first that matches at a position wins.
const INLINE =
  /`([^`\n]+)`|\*\*(.+?)\*\*|\*([^*\s](?:[^*]*[^*\s])?)\*|\[([^\]\n]+)\]\(([^)\s]+)\)|(https?:\/\/[^\s<>"'()（）\[\]，。；！？、]+)/g;

/** A link target we are willing to put in an href: absolute http(s) only (no javascript:, data:, ...). */
export function safeUrl(url) {
  try {
    const parsed = new URL(url);
    return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
  } catch {
    return null;
  }
}

function link(href, label) {
  const a = document.createElement("a");
  a.href = href;
  a.target = "_blank";
  a.rel = "noopener noreferrer nofollow";
  appendInline(a, label);
  return a;
}

/** Append `text` to `parent`, turning the inline forms into elements and everything else into text. */
export function appendInline(parent, text) {
  let last = 0;
  for (const match of text.matchAll(INLINE)) {
    if (match.index > last) parent.append(text.slice(last, match.index));
    const [whole, code, bold, italic, label, target, bare] = match;
    if (code !== undefined) {
      const node = document.createElement("code");
      node.textContent = code;
      parent.append(node);
    } else if (bold !== undefined || italic !== undefined) {
      const node = document.createElement(bold !== undefined ? "strong" : "em");
      appendInline(node, bold ?? italic);
      parent.append(node);
    } else if (label !== undefined) {
      const href = safeUrl(target);
      // An unsafe target keeps its label as plain text and drops the link.
      if (href) parent.append(link(href, label));
      else appendInline(parent, label);
    } else {
      const href = safeUrl(bare);
      parent.append(href ? link(href, bare) : whole);
    }
    last = match.index + whole.length;
  }
  if (last < text.length) parent.append(text.slice(last));
}

/** The Markdown `text` as a DocumentFragment of safe nodes. */
export function renderMarkdown(text) {
  const root = document.createDocumentFragment();
  let paragraph = null;
  let list = null;
  for (const raw of String(text ?? "").replace(/\r\n?/g, "\n").split("\n")) {
    const line = raw.trimEnd();
    if (!line.trim()) {
      paragraph = list = null;
      continue;
    }
    const ordered = ORDERED.exec(line);
    const bullet = ordered ? null : BULLET.exec(line);
    if ((ordered && ordered[2]) || bullet) {
      const tag = ordered ? "ol" : "ul";
      if (!list || list.localName !== tag) {
        list = document.createElement(tag);
        if (ordered && ordered[1] !== "1") list.start = Number(ordered[1]);
        root.append(list);
      }
      const item = document.createElement("li");
      appendInline(item, ordered ? ordered[2] : bullet[1]);
      list.append(item);
      paragraph = null;
      continue;
    }
    list = null;
    const heading = HEADING.exec(line);
    if (heading) {
      const node = document.createElement("p");
      const strong = document.createElement("strong");
      appendInline(strong, heading[1]);
      node.append(strong);
      root.append(node);
      paragraph = null;
      continue;
    }
    if (paragraph) paragraph.append(document.createElement("br"));
    else root.append((paragraph = document.createElement("p")));
    appendInline(paragraph, line.trim());
  }
  return root;
}
