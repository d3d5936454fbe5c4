//! The game, as plain data: no pointers, no heap, so the whole `Game` can live in checkpoint
//! memory and be mapped back on a spare. Rules follow the Tetris guideline in spirit: 10 × 20
//! board, the seven tetrominoes from a 7-bag, rotation with wall kicks, soft and hard drop,
//! 100/300/500/800 × level for 1–4 lines, a level every 10 lines, gravity speeding up.

/// Board width.
pub const WIDTH: usize = 10;
/// Board height.
pub const HEIGHT: usize = 20;

/// The seven tetrominoes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// I
    I = 1,
    /// O
    O,
    /// T
    T,
    /// S
    S,
    /// Z
    Z,
    /// J
    J,
    /// L
    L,
}

impl Kind {
    const ALL: [Kind; 7] = [
        Kind::I,
        Kind::O,
        Kind::T,
        Kind::S,
        Kind::Z,
        Kind::J,
        Kind::L,
    ];

    /// The four cells of this piece in rotation `r` (0–3), as (x, y) offsets, y downwards.
    pub fn cells(self, r: u8) -> [(i8, i8); 4] {
        // Rotation state 0 of each piece in a 4×4 (I) or 3×3 box; the others are computed by
        // rotating the box clockwise.
        let (base, size): ([(i8, i8); 4], i8) = match self {
            Kind::I => ([(0, 1), (1, 1), (2, 1), (3, 1)], 4),
            Kind::O => ([(1, 0), (2, 0), (1, 1), (2, 1)], 4),
            Kind::T => ([(1, 0), (0, 1), (1, 1), (2, 1)], 3),
            Kind::S => ([(1, 0), (2, 0), (0, 1), (1, 1)], 3),
            Kind::Z => ([(0, 0), (1, 0), (1, 1), (2, 1)], 3),
            Kind::J => ([(0, 0), (0, 1), (1, 1), (2, 1)], 3),
            Kind::L => ([(2, 0), (0, 1), (1, 1), (2, 1)], 3),
        };
        let mut c = base;
        for _ in 0..(r % 4) {
            for p in &mut c {
                *p = (size - 1 - p.1, p.0);
            }
        }
        c
    }
}

/// Wall kicks tried, in order, when a rotation collides (x right, y down), per rotation
/// from state `from` clockwise; counter-clockwise uses the negated table of the target state.
fn kicks(kind: Kind, from: u8) -> [(i8, i8); 5] {
    const JLSTZ: [[(i8, i8); 5]; 4] = [
        [(0, 0), (-1, 0), (-1, -1), (0, 2), (-1, 2)],
        [(0, 0), (1, 0), (1, 1), (0, -2), (1, -2)],
        [(0, 0), (1, 0), (1, -1), (0, 2), (1, 2)],
        [(0, 0), (-1, 0), (-1, 1), (0, -2), (-1, -2)],
    ];
    const I: [[(i8, i8); 5]; 4] = [
        [(0, 0), (-2, 0), (1, 0), (-2, 1), (1, -2)],
        [(0, 0), (-1, 0), (2, 0), (-1, -2), (2, 1)],
        [(0, 0), (2, 0), (-1, 0), (2, -1), (-1, 2)],
        [(0, 0), (1, 0), (-2, 0), (1, 2), (-2, -1)],
    ];
    match kind {
        Kind::O => [(0, 0); 5],
        Kind::I => I[from as usize % 4],
        _ => JLSTZ[from as usize % 4],
    }
}

/// A falling piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// Which tetromino.
    pub kind: Kind,
    /// Rotation state 0–3.
    pub rot: u8,
    /// Column of the box's left edge.
    pub x: i8,
    /// Row of the box's top edge.
    pub y: i8,
}

impl Piece {
    fn spawn(kind: Kind) -> Piece {
        Piece {
            kind,
            rot: 0,
            x: 3,
            y: 0,
        }
    }

    /// Board cells covered.
    pub fn cells(&self) -> [(i8, i8); 4] {
        self.kind
            .cells(self.rot)
            .map(|(cx, cy)| (self.x + cx, self.y + cy))
    }
}

/// A move the player (or the autoplayer) makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    /// One column left.
    Left,
    /// One column right.
    Right,
    /// Rotate clockwise.
    RotateCw,
    /// Rotate counter-clockwise.
    RotateCcw,
    /// One row down (soft drop, 1 point).
    SoftDrop,
    /// All the way down and lock (2 points per row).
    HardDrop,
}

/// The whole game state. `Copy` and pointer-free on purpose (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Game {
    /// Cells, row-major, 0 = empty, else the `Kind` that locked there.
    pub board: [[u8; WIDTH]; HEIGHT],
    /// The falling piece.
    pub current: Piece,
    /// The next piece (preview).
    pub next: Kind,
    /// Score.
    pub score: u64,
    /// Lines cleared.
    pub lines: u32,
    /// Level (1 + lines / 10).
    pub level: u32,
    /// Game over.
    pub over: bool,
    /// Paused.
    pub paused: bool,
    /// Random generator state (xorshift64*), so a resumed game deals the same pieces.
    pub rng: u64,
    /// The 7-bag being dealt and how many of it are used.
    pub bag: [u8; 7],
    /// Pieces of `bag` already dealt.
    pub bag_used: u8,
    /// Milliseconds of play until the next gravity step.
    pub gravity_left_ms: u32,
    /// Pieces locked so far.
    pub pieces: u64,
}

impl Game {
    /// A new game from a seed.
    pub fn new(seed: u64) -> Game {
        let mut g = Game {
            board: [[0; WIDTH]; HEIGHT],
            current: Piece::spawn(Kind::T),
            next: Kind::T,
            score: 0,
            lines: 0,
            level: 1,
            over: false,
            paused: false,
            rng: seed | 1,
            bag: [0; 7],
            bag_used: 7,
            gravity_left_ms: 0,
            pieces: 0,
        };
        let first = g.deal();
        g.next = g.deal();
        g.current = Piece::spawn(first);
        g.gravity_left_ms = g.gravity_ms();
        g
    }

    fn rand(&mut self) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// The next piece of the 7-bag (every kind once per seven pieces).
    fn deal(&mut self) -> Kind {
        if self.bag_used as usize >= 7 {
            let mut b = [1u8, 2, 3, 4, 5, 6, 7];
            for i in (1..7).rev() {
                let j = (self.rand() % (i as u64 + 1)) as usize;
                b.swap(i, j);
            }
            self.bag = b;
            self.bag_used = 0;
        }
        let k = Kind::ALL[self.bag[self.bag_used as usize] as usize - 1];
        self.bag_used += 1;
        k
    }

    /// Milliseconds between gravity steps at the current level.
    pub fn gravity_ms(&self) -> u32 {
        800u32
            .saturating_sub((self.level.saturating_sub(1)) * 70)
            .max(60)
    }

    /// Whether `p` fits on the board.
    pub fn fits(&self, p: &Piece) -> bool {
        p.cells().iter().all(|&(x, y)| {
            (0..WIDTH as i8).contains(&x)
                && (0..HEIGHT as i8).contains(&y)
                && self.board[y as usize][x as usize] == 0
        })
    }

    /// Applies a move; returns whether anything changed (a changed game is worth a checkpoint).
    pub fn apply(&mut self, m: Move) -> bool {
        if self.over || self.paused {
            return false;
        }
        let p = self.current;
        match m {
            Move::Left | Move::Right => {
                let q = Piece {
                    x: p.x + if m == Move::Left { -1 } else { 1 },
                    ..p
                };
                self.try_place(q)
            }
            Move::RotateCw | Move::RotateCcw => self.rotate(m == Move::RotateCw),
            Move::SoftDrop => {
                if self.try_place(Piece { y: p.y + 1, ..p }) {
                    self.score += 1;
                } else {
                    self.lock();
                }
                true
            }
            Move::HardDrop => {
                let mut q = p;
                while self.fits(&Piece { y: q.y + 1, ..q }) {
                    q.y += 1;
                }
                self.score += 2 * (q.y - p.y) as u64;
                self.current = q;
                self.lock();
                true
            }
        }
    }

    fn try_place(&mut self, q: Piece) -> bool {
        if self.fits(&q) {
            self.current = q;
            true
        } else {
            false
        }
    }

    fn rotate(&mut self, cw: bool) -> bool {
        let p = self.current;
        let to = if cw { (p.rot + 1) % 4 } else { (p.rot + 3) % 4 };
        let table = if cw {
            kicks(p.kind, p.rot)
        } else {
            kicks(p.kind, to).map(|(x, y)| (-x, -y))
        };
        for (dx, dy) in table {
            // The tables use y up; our board has y down.
            let q = Piece {
                rot: to,
                x: p.x + dx,
                y: p.y - dy,
                ..p
            };
            if self.try_place(q) {
                return true;
            }
        }
        false
    }

    /// Advances time by `ms`; gravity moves the piece down, locking it when it lands.
    /// Returns whether anything changed.
    pub fn tick(&mut self, ms: u32) -> bool {
        if self.over || self.paused {
            return false;
        }
        let mut changed = false;
        let mut left = ms;
        while left >= self.gravity_left_ms {
            left -= self.gravity_left_ms;
            self.gravity_left_ms = self.gravity_ms();
            let p = self.current;
            if !self.try_place(Piece { y: p.y + 1, ..p }) {
                self.lock();
            }
            changed = true;
            if self.over {
                return true;
            }
        }
        self.gravity_left_ms -= left;
        changed
    }

    /// Fixes the current piece, clears full lines, scores, deals the next piece.
    fn lock(&mut self) {
        for (x, y) in self.current.cells() {
            self.board[y as usize][x as usize] = self.current.kind as u8;
        }
        self.pieces += 1;
        let full: Vec<usize> = (0..HEIGHT)
            .filter(|&y| self.board[y].iter().all(|&c| c != 0))
            .collect();
        for &y in &full {
            for row in (1..=y).rev() {
                self.board[row] = self.board[row - 1];
            }
            self.board[0] = [0; WIDTH];
        }
        let n = full.len() as u32;
        self.score += [0, 100, 300, 500, 800][n as usize] * u64::from(self.level);
        self.lines += n;
        self.level = 1 + self.lines / 10;
        let next = self.next;
        self.next = self.deal();
        self.current = Piece::spawn(next);
        self.gravity_left_ms = self.gravity_ms();
        if !self.fits(&self.current) {
            self.over = true;
        }
    }

    /// The autoplayer's choice: the rotation and column whose landing leaves the best board
    /// (fewest holes, lowest, flattest, most lines), as the moves to get there.
    pub fn best_moves(&self) -> Vec<Move> {
        let mut best: Option<(i64, u8, i8)> = None;
        for rot in 0..4u8 {
            for x in -2..WIDTH as i8 {
                let mut g = *self;
                let p = Piece {
                    rot,
                    x,
                    y: 0,
                    ..self.current
                };
                if !g.fits(&p) {
                    continue;
                }
                g.current = p;
                while g.fits(&Piece {
                    y: g.current.y + 1,
                    ..g.current
                }) {
                    g.current.y += 1;
                }
                let before = g.lines;
                g.lock();
                let score = evaluate(&g) + i64::from(g.lines - before) * 80;
                if best.is_none_or(|b| score > b.0) {
                    best = Some((score, rot, x));
                }
            }
        }
        let Some((_, rot, x)) = best else {
            return vec![Move::HardDrop];
        };
        let mut moves = Vec::new();
        let turns = (rot + 4 - self.current.rot) % 4;
        moves.extend(std::iter::repeat_n(Move::RotateCw, turns as usize));
        let dx = x - self.current.x;
        let step = if dx < 0 { Move::Left } else { Move::Right };
        moves.extend(std::iter::repeat_n(step, dx.unsigned_abs() as usize));
        moves.push(Move::HardDrop);
        moves
    }
}

/// Board quality for the autoplayer: aggregate height, holes and bumpiness, all bad.
fn evaluate(g: &Game) -> i64 {
    let mut heights = [0i64; WIDTH];
    let mut holes = 0;
    for (x, height) in heights.iter_mut().enumerate() {
        let mut seen = false;
        for (y, row) in g.board.iter().enumerate() {
            if row[x] != 0 {
                if !seen {
                    *height = (HEIGHT - y) as i64;
                    seen = true;
                }
            } else if seen {
                holes += 1;
            }
        }
    }
    let aggregate: i64 = heights.iter().sum();
    let bumpiness: i64 = heights.windows(2).map(|w| (w[0] - w[1]).abs()).sum();
    -(aggregate * 5 + holes * 35 + bumpiness * 2) - if g.over { 100_000 } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty_with(p: Piece) -> Game {
        let mut g = Game::new(1);
        g.current = p;
        g
    }

    #[test]
    fn rotation_cycles_and_shapes_have_four_cells_in_their_box() {
        for k in Kind::ALL {
            assert_eq!(
                k.cells(0),
                k.cells(4),
                "{k:?}: four turns are a full circle"
            );
            for r in 0..4 {
                let size = if matches!(k, Kind::I | Kind::O) { 4 } else { 3 };
                assert!(k
                    .cells(r)
                    .iter()
                    .all(|&(x, y)| (0..size).contains(&x) && (0..size).contains(&y)));
            }
        }
        assert_eq!(Kind::I.cells(1), [(2, 0), (2, 1), (2, 2), (2, 3)]);
    }

    #[test]
    fn walls_and_floor_collide() {
        let mut g = empty_with(Piece {
            kind: Kind::O,
            rot: 0,
            x: -1,
            y: 0,
        });
        assert!(!g.apply(Move::Left), "the O is against the left wall");
        assert!(g.apply(Move::Right));
        g.current = Piece {
            kind: Kind::O,
            rot: 0,
            x: 7,
            y: 0,
        };
        assert!(!g.apply(Move::Right), "against the right wall");
    }

    #[test]
    fn wall_kick_lets_an_i_rotate_against_the_wall() {
        // A vertical I against the left wall cannot rotate in place; the kick moves it right.
        let mut g = empty_with(Piece {
            kind: Kind::I,
            rot: 1,
            x: -2,
            y: 5,
        });
        assert!(g.fits(&g.current));
        assert!(g.apply(Move::RotateCw));
        assert_eq!(g.current.rot, 2);
        assert!(g.current.cells().iter().all(|&(x, _)| x >= 0));
    }

    #[test]
    fn clearing_lines_scores_by_level() {
        let mut g = Game::new(3);
        for y in HEIGHT - 4..HEIGHT {
            for x in 0..WIDTH - 1 {
                g.board[y][x] = 1;
            }
        }
        g.current = Piece {
            kind: Kind::I,
            rot: 1,
            x: WIDTH as i8 - 3,
            y: 0,
        };
        g.level = 2;
        g.apply(Move::HardDrop);
        assert_eq!(g.lines, 4);
        assert!(
            g.board.iter().all(|r| r.iter().all(|&c| c == 0)),
            "a tetris clears the board"
        );
        // 800 × level 2, plus 2 points per row of hard drop (16 rows).
        assert_eq!(g.score, 800 * 2 + 2 * 16);
    }

    #[test]
    fn levels_speed_up_gravity() {
        let mut g = Game::new(4);
        let slow = g.gravity_ms();
        g.lines = 50;
        g.level = 6;
        assert!(g.gravity_ms() < slow);
        g.level = 100;
        assert_eq!(g.gravity_ms(), 60);
    }

    #[test]
    fn the_bag_deals_every_kind_once_per_seven() {
        let mut g = Game::new(5);
        g.bag_used = 7; // start at a bag boundary (new() already dealt two pieces)
        for _ in 0..10 {
            let mut seen: Vec<u8> = (0..7).map(|_| g.deal() as u8).collect();
            seen.sort_unstable();
            assert_eq!(seen, vec![1, 2, 3, 4, 5, 6, 7]);
        }
    }

    #[test]
    fn gravity_locks_pieces_and_the_game_ends() {
        let mut g = Game::new(6);
        let mut steps = 0;
        while !g.over && steps < 100_000 {
            g.tick(g.gravity_ms());
            steps += 1;
        }
        assert!(g.over, "pieces stacking without moves must end the game");
        assert!(g.pieces > 5);
    }

    #[test]
    fn autoplay_clears_lines() {
        let mut g = Game::new(7);
        for _ in 0..400 {
            if g.over {
                break;
            }
            for m in g.best_moves() {
                g.apply(m);
            }
        }
        assert!(
            g.lines >= 20,
            "the autoplayer cleared only {} lines in {} pieces",
            g.lines,
            g.pieces
        );
    }
}
