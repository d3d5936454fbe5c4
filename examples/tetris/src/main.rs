//! `tetris [--autoplay] [--plain] [--seed N]`: terminal Tetris on the Hot Spare Library.
//!
//! Without `--plain` the game state lives in the checkpoint heap, the main loop is the worker
//! loop "tetris", the terminal is set up inside it (so a spare sets up its own), SIGWINCH and
//! SIGTERM handlers are registered by name, and every move is a checkpoint. Started by
//! `hotspare-resume --exec`, the game goes on from the last move. `--plain` is the same game with
//! no Hot Spare at all.
//!
//! Keys: ←/→ move, ↑ or x rotate, z rotate back, ↓ soft drop, space hard drop, p pause, q quit.

use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind};
use crossterm::style::{Color, Print, ResetColor, SetForegroundColor};
use crossterm::{cursor, execute, queue, terminal};
use examples_tetris::game::{Game, Move, HEIGHT};
use hotspare::{HotSpare, Mutex};
use std::io::{stdout, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[global_allocator]
static A: hotspare::GlobalHeap = hotspare::GlobalHeap::new();

/// What survives a failover: the game, how it is played, and the autoplayer's plan (ordinary
/// Rust: with `GlobalHeap` the `Vec` is in checkpoint memory like the rest).
struct Session {
    game: Game,
    autoplay: bool,
    plan: Vec<Move>,
}

static REDRAW: AtomicBool = AtomicBool::new(true);
static QUIT: AtomicBool = AtomicBool::new(false);

extern "C" fn on_winch(_: libc::c_int) {
    REDRAW.store(true, Ordering::SeqCst);
}

extern "C" fn on_term(_: libc::c_int) {
    QUIT.store(true, Ordering::SeqCst);
}

fn color(k: u8) -> Color {
    match k {
        1 => Color::Cyan,
        2 => Color::Yellow,
        3 => Color::Magenta,
        4 => Color::Green,
        5 => Color::Red,
        6 => Color::Blue,
        _ => Color::DarkYellow,
    }
}

fn render(g: &Game, status: &str) -> std::io::Result<()> {
    let mut out = stdout();
    let mut cells = g.board;
    if !g.over {
        for (x, y) in g.current.cells() {
            cells[y as usize][x as usize] = g.current.kind as u8;
        }
    }
    queue!(out, cursor::MoveTo(0, 0), Print("+--------------------+"))?;
    for (y, row) in cells.iter().enumerate() {
        queue!(out, cursor::MoveTo(0, y as u16 + 1), Print("|"))?;
        for &c in row {
            if c == 0 {
                queue!(out, Print(" ."))?;
            } else {
                queue!(out, SetForegroundColor(color(c)), Print("[]"), ResetColor)?;
            }
        }
        queue!(out, Print("|"))?;
    }
    queue!(
        out,
        cursor::MoveTo(0, HEIGHT as u16 + 1),
        Print("+--------------------+")
    )?;
    let info = [
        format!("SCORE {:>8}", g.score),
        format!("LINES {:>8}", g.lines),
        format!("LEVEL {:>8}", g.level),
        "NEXT".to_string(),
    ];
    for (i, l) in info.iter().enumerate() {
        queue!(out, cursor::MoveTo(24, i as u16 + 1), Print(l))?;
    }
    for row in 0..4u16 {
        queue!(out, cursor::MoveTo(24, 6 + row), Print("        "))?;
    }
    for (x, y) in g.next.cells(0) {
        queue!(
            out,
            cursor::MoveTo(24 + 2 * x as u16, 6 + y as u16),
            SetForegroundColor(color(g.next as u8)),
            Print("[]"),
            ResetColor
        )?;
    }
    let state = if g.over {
        "GAME OVER (q quits)"
    } else if g.paused {
        "PAUSED"
    } else {
        ""
    };
    queue!(
        out,
        cursor::MoveTo(24, 11),
        terminal::Clear(terminal::ClearType::UntilNewLine),
        Print(state)
    )?;
    queue!(
        out,
        cursor::MoveTo(0, HEIGHT as u16 + 3),
        terminal::Clear(terminal::ClearType::UntilNewLine),
        Print(status)
    )?;
    out.flush()
}

fn key_move(k: KeyEvent) -> Option<Move> {
    match k.code {
        KeyCode::Left | KeyCode::Char('h') => Some(Move::Left),
        KeyCode::Right | KeyCode::Char('l') => Some(Move::Right),
        KeyCode::Up | KeyCode::Char('x') => Some(Move::RotateCw),
        KeyCode::Char('z') => Some(Move::RotateCcw),
        KeyCode::Down | KeyCode::Char('j') => Some(Move::SoftDrop),
        KeyCode::Char(' ') => Some(Move::HardDrop),
        _ => None,
    }
}

/// The game loop. `checkpoint` is called after every change (the paper's choice: a checkpoint
/// per move); `status` is shown under the board.
fn play(session: &Mutex<Session>, checkpoint: &dyn Fn(), status: &str) -> std::io::Result<()> {
    let mut out = stdout();
    terminal::enable_raw_mode()?;
    execute!(
        out,
        terminal::EnterAlternateScreen,
        cursor::Hide,
        terminal::Clear(terminal::ClearType::All)
    )?;
    let result = game_loop(session, checkpoint, status);
    let _ = execute!(out, cursor::Show, terminal::LeaveAlternateScreen);
    let _ = terminal::disable_raw_mode();
    let s = session.lock();
    println!(
        "score {} lines {} level {}",
        s.game.score, s.game.lines, s.game.level
    );
    result
}

fn game_loop(session: &Mutex<Session>, checkpoint: &dyn Fn(), status: &str) -> std::io::Result<()> {
    let mut last = Instant::now();
    let mut next_auto = Instant::now();
    loop {
        if QUIT.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mut changed = false;
        if event::poll(Duration::from_millis(15))? {
            if let Event::Key(k) = event::read()? {
                if k.kind != KeyEventKind::Release {
                    let mut s = session.lock();
                    match k.code {
                        KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                        KeyCode::Char('p') => {
                            s.game.paused = !s.game.paused;
                            changed = true;
                        }
                        _ => {
                            if let Some(m) = key_move(k) {
                                changed |= s.game.apply(m);
                            }
                        }
                    }
                }
            } else {
                REDRAW.store(true, Ordering::SeqCst);
            }
        }
        {
            let mut s = session.lock();
            if s.autoplay && !s.game.over && !s.game.paused && Instant::now() >= next_auto {
                if s.plan.is_empty() {
                    s.plan = s.game.best_moves();
                    s.plan.reverse();
                }
                if let Some(m) = s.plan.pop() {
                    changed |= s.game.apply(m);
                }
                next_auto = Instant::now() + Duration::from_millis(90);
            }
            let ms = last.elapsed().as_millis() as u32;
            last = Instant::now();
            changed |= s.game.tick(ms);
            if changed || REDRAW.swap(false, Ordering::SeqCst) {
                render(&s.game, status)?;
            }
        }
        if changed {
            checkpoint();
        }
    }
}

fn worker(hs: &HotSpare) {
    let session = hs.heap().root::<Mutex<Session>>().expect("root");
    let status = match hs.resumed() {
        Some(r) => format!(
            "resumed from checkpoint {} in {:.1?}",
            r.seq, r.restore_time
        ),
        None => "primary: every move is a checkpoint".to_owned(),
    };
    // Never wait for a slow spare: the game must stay responsive (timeline consistency).
    let checkpoint = || {
        if let Err(e) = hs.cpt_or_coalesce() {
            eprintln!("tetris: checkpoint: {e}");
        }
    };
    if let Err(e) = play(session, &checkpoint, &status) {
        eprintln!("tetris: terminal: {e}");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let autoplay = args.iter().any(|a| a == "--autoplay");
    let plain = args.iter().any(|a| a == "--plain");
    let seed = args
        .iter()
        .position(|a| a == "--seed")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    let session = move || {
        Mutex::new(Session {
            game: Game::new(seed),
            autoplay,
            plan: Vec::new(),
        })
    };
    let run = if plain {
        play(&session(), &|| {}, "plain game (no Hot Spare)").map_err(|e| e.to_string())
    } else {
        // A resume calls `worker` with the restored session instead of `session()`.
        HotSpare::builder()
            .and_then(|b| {
                b.worker("tetris", worker)
                    .on_signal(libc::SIGWINCH, "winch", on_winch)
                    .on_signal(libc::SIGTERM, "term", on_term)
                    .serve(session)
            })
            .map_err(|e| e.to_string())
    };
    if let Err(e) = run {
        eprintln!("tetris: {e}");
        std::process::exit(1);
    }
}
