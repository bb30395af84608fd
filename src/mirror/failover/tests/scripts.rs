//! The rules as readable scripts: each file in `src/mirror/failover/testscripts/` is one
//! scenario of the behavioural reference (a row of the lost-connection matrix, an item of the
//! outage list), written as the events each member sees and what it does, with the state after.
//! One test runs them all.
//!
//! # The format
//!
//! A script is blocks separated by blank lines. A block is a command, a line `----`, and the
//! output the command must give; lines starting with `#` are comments. The commands:
//!
//! - `pair` or `pair arbiter`: a primary `p` and its active backup `b`, connected, and (with
//!   `arbiter`) both on the arbiter and in arbiter-controlled mode, as the arbiter booked it.
//! - `p 1000 PartnerLost`: member `p` sees an event at time 1000 ms (the event as Rust prints
//!   it: `ArbiterSeesPartner(false)`, `Agent(PrimaryDown { journal: true })`, …). The output is
//!   each action, in order, then the member's state (its status, mode, whether it is or has
//!   an active backup, its trouble, and `holds the link` while a backup may not reconnect).
//! - `p 1000 arbiter-answer`: the arbiter answers the member's question from its book (the
//!   primary hears whether the arbiter sees the backup, the backup hears its verdict).
//! - `book sees_backup=false …`: changes what the arbiter sees; the output is the book.
//!
//! With `MIRRORLAB_SCRIPTS_UPDATE=1` the runner writes the outputs it got into the files
//! (review the difference before keeping it); otherwise any difference fails the test.

use super::super::*;
use super::{feed, pair, to_primary};

/// The scripts' folder.
fn folder() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/mirror/failover/testscripts")
}

/// Every event a script may name, by the way Rust prints it.
fn events() -> Vec<Event> {
    let mut all = vec![
        Event::Tick,
        Event::PartnerConnected,
        Event::PartnerActive,
        Event::PartnerLost,
        Event::PartnerStoodDown,
        Event::PartnerHandsOver,
        Event::PartnerIsPrimary,
        Event::ArbiterConnected,
        Event::ArbiterLost,
        Event::Agent(AgentAnswer::PrimaryRunning),
        Event::Agent(AgentAnswer::Unreachable),
    ];
    for mode in [Mode::Agent, Mode::Arbiter] {
        all.push(Event::PartnerMode(mode));
    }
    for on in [false, true] {
        all.extend([
            Event::ArbiterSeesPartner(on),
            Event::ArbiterBookedMode(on),
            Event::ArbiterVerdict { take_over: on },
            Event::Agent(AgentAnswer::PrimaryDown { journal: on }),
            Event::NoFailover(on),
            Event::DatabasesReady(on),
            Event::MirrorStopped(on),
        ]);
    }
    all
}

/// A member's state, as one line.
fn state(who: &str, f: &Failover) -> String {
    let trouble = match f.trouble() {
        None => String::new(),
        Some(Trouble::Until(ms)) => format!(", in trouble until {ms} ms"),
        Some(Trouble::Coordinating) => ", in trouble until the arbiter coordinates".into(),
        Some(Trouble::Indefinite) => ", in trouble indefinitely".into(),
    };
    // A backup whose rules keep its receiver from reconnecting says so.
    let holds = if f.role() != FailoverRole::Backup || f.may_connect() {
        ""
    } else {
        ", holds the link"
    };
    format!(
        "{who}: {}, {}, {}{trouble}{holds}",
        f.status(),
        f.mode().display(),
        if f.active() { "active" } else { "not active" }
    )
}

fn book_line(book: &ArbiterBook) -> String {
    let mut facts = Vec::new();
    if book.sees_primary {
        facts.push("sees the primary");
    }
    if book.sees_backup {
        facts.push("sees the backup");
    }
    if book.primary_in_arbiter_mode {
        facts.push("primary booked in arbiter mode");
    }
    if book.backup_took_over {
        facts.push("takeover booked");
    }
    if facts.is_empty() {
        return "book: sees neither member".into();
    }
    format!("book: {}", facts.join(", "))
}

/// The world a script runs in.
struct Script {
    p: Failover,
    b: Failover,
    book: ArbiterBook,
}

impl Script {
    fn run(&mut self, command: &str) -> Result<Vec<String>, String> {
        let words: Vec<&str> = command.split_whitespace().collect();
        match words.as_slice() {
            ["pair"] | ["pair", "arbiter"] => {
                let (p, b, book) = pair(words.len() == 2);
                *self = Script { p, b, book };
                Ok(vec![
                    state("p", &self.p),
                    state("b", &self.b),
                    book_line(&self.book),
                ])
            }
            ["book", settings @ ..] => {
                for setting in settings {
                    let (field, value) = setting
                        .split_once('=')
                        .ok_or_else(|| format!("not field=value: {setting}"))?;
                    let value: bool = value.parse().map_err(|_| format!("not a bool: {value}"))?;
                    match field {
                        "sees_primary" => self.book.sees_primary = value,
                        "sees_backup" => self.book.sees_backup = value,
                        "primary_in_arbiter_mode" => self.book.primary_in_arbiter_mode = value,
                        "backup_took_over" => self.book.backup_took_over = value,
                        other => return Err(format!("no book field {other}")),
                    }
                }
                Ok(vec![book_line(&self.book)])
            }
            [who @ ("p" | "b"), time, rest @ ..] => {
                let now: u64 = time.parse().map_err(|_| format!("not a time: {time}"))?;
                let event = match rest.join(" ").as_str() {
                    "arbiter-answer" if *who == "p" => to_primary(self.book.ask_from_primary()),
                    "arbiter-answer" => Event::ArbiterVerdict {
                        take_over: self.book.ask_from_backup(),
                    },
                    text => events()
                        .into_iter()
                        .find(|e| format!("{e:?}") == text)
                        .ok_or_else(|| format!("no event {text}"))?,
                };
                let member = if *who == "p" {
                    &mut self.p
                } else {
                    &mut self.b
                };
                let mut out: Vec<String> = feed(member, now, &[event])
                    .into_iter()
                    .map(|a| format!("{who}: {a:?}"))
                    .collect();
                out.push(state(who, member));
                Ok(out)
            }
            _ => Err(format!("no command {command:?}")),
        }
    }
}

/// Runs one script's text; returns it with the outputs the commands gave.
fn run_script(text: &str) -> Result<String, String> {
    let (p, b, book) = pair(false);
    let mut script = Script { p, b, book };
    let mut out = Vec::new();
    for block in text.trim_end().split("\n\n") {
        let mut lines = block.lines().peekable();
        let mut kept = Vec::new();
        while let Some(line) = lines.peek() {
            if line.starts_with('#') || line.trim().is_empty() {
                kept.push(line.to_string());
                lines.next();
            } else {
                break;
            }
        }
        let Some(command) = lines.next() else {
            out.push(kept.join("\n"));
            continue;
        };
        kept.push(command.to_string());
        kept.push("----".into());
        kept.extend(script.run(command)?);
        out.push(kept.join("\n"));
    }
    Ok(out.join("\n\n") + "\n")
}

#[test]
fn every_scenario_script_gives_its_outputs() {
    let update = std::env::var_os("MIRRORLAB_SCRIPTS_UPDATE").is_some();
    let mut files: Vec<_> = std::fs::read_dir(folder())
        .expect("the scripts' folder")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "only {} scripts", files.len());
    let mut failed = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let got = run_script(&text).unwrap_or_else(|why| panic!("{}: {why}", file.display()));
        if got == text {
            continue;
        }
        if update {
            std::fs::write(file, &got).unwrap();
        } else {
            let (want, have): (Vec<_>, Vec<_>) = text
                .split("\n\n")
                .zip(got.split("\n\n"))
                .find(|(w, h)| w != h)
                .map(|(w, h)| (vec![w], vec![h]))
                .unwrap_or_default();
            failed.push(format!(
                "{}: the script says\n{}\nbut the rules give\n{}",
                file.display(),
                want.join(""),
                have.join("")
            ));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}
