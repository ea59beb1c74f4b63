//! `cutover web-password`: asks for the status page's password and writes its argon2
//! hash to `[web] password_file` (mode 0600). The password itself is stored nowhere.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

/// Turns the terminal's echo off while it lives (when standard input is a terminal).
struct NoEcho(Option<libc::termios>);

impl NoEcho {
    fn new() -> NoEcho {
        if !std::io::stdin().is_terminal() {
            return NoEcho(None);
        }
        // SAFETY: tcgetattr/tcsetattr on fd 0 with a termios we own.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return NoEcho(None);
            }
            let saved = t;
            t.c_lflag &= !libc::ECHO;
            libc::tcsetattr(0, libc::TCSANOW, &t);
            NoEcho(Some(saved))
        }
    }
}

impl Drop for NoEcho {
    fn drop(&mut self) {
        if let Some(t) = self.0 {
            // SAFETY: restores the settings read in `new`.
            unsafe {
                libc::tcsetattr(0, libc::TCSANOW, &t);
            }
        }
    }
}

fn read_line(prompt: &str) -> anyhow::Result<String> {
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let _quiet = NoEcho::new();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if std::io::stdin().is_terminal() {
        eprintln!();
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// The command. Reads the password from standard input (twice on a terminal).
pub fn run(config: &Path) -> anyhow::Result<bool> {
    let cfg = crate::config::Config::load(config)?;
    let Some(file) = cfg.web.password_file.clone() else {
        anyhow::bail!(
            "set [web] password_file in {} first: the hash is written there",
            config.display()
        );
    };
    let pw = read_line("New password for the status page: ")?;
    if pw.chars().count() < 8 {
        anyhow::bail!("the password must have at least 8 characters");
    }
    if std::io::stdin().is_terminal() && read_line("Again: ")? != pw {
        anyhow::bail!("the two passwords differ; nothing written");
    }
    write(&file, &pw)?;
    println!(
        "wrote the password's hash to {}; restart `cutover run` for it to apply",
        file.display()
    );
    Ok(true)
}

/// Writes the hash of `password` to `file`, private to the service user.
pub fn write(file: &Path, password: &str) -> anyhow::Result<()> {
    let hash = super::auth::hash(password)?;
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::daemon::files::create_dir_all(dir)?;
    }
    let tmp = file.with_extension("tmp");
    crate::daemon::files::write(&tmp, format!("{hash}\n").as_bytes())?;
    std::fs::rename(&tmp, file)?;
    Ok(())
}
