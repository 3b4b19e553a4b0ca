//! Referring expressions as data: the grammar (descriptions, left/right, closest/farthest, behind/in front of),
//! their English text, a parser from that text back to the structure, and the resolver that says which visible
//! object an expression picks. The generator only emits expressions this resolver maps to exactly one object.

use crate::scene::{Colour, Shape, Size};

/// "small red cube", "red object", "cube"...: every part optional (all none = "object").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Desc {
    pub size: Option<Size>,
    pub colour: Option<Colour>,
    pub shape: Option<Shape>,
}

impl Desc {
    pub fn matches(&self, o: &ObjInfo) -> bool {
        self.size.is_none_or(|s| s == o.size)
            && self.colour.is_none_or(|c| c == o.colour)
            && self.shape.is_none_or(|s| s == o.shape)
    }
    /// The 8 descriptions of an object, from "object" to "small red cube".
    pub fn all_of(o: &ObjInfo) -> Vec<Desc> {
        let mut v = Vec::with_capacity(8);
        for mask in 0..8u8 {
            v.push(Desc {
                size: (mask & 1 != 0).then_some(o.size),
                colour: (mask & 2 != 0).then_some(o.colour),
                shape: (mask & 4 != 0).then_some(o.shape),
            });
        }
        v
    }
    /// Number of attributes named.
    pub fn len(&self) -> usize {
        usize::from(self.size.is_some()) + usize::from(self.colour.is_some()) + usize::from(self.shape.is_some())
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// "small red cube" / "red object".
    pub fn text(&self) -> String {
        let mut parts: Vec<&str> = Vec::with_capacity(3);
        if let Some(s) = self.size {
            parts.push(s.name());
        }
        if let Some(c) = self.colour {
            parts.push(c.name());
        }
        parts.push(self.shape.map_or("object", Shape::name));
        parts.join(" ")
    }
}

/// Left/right in the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    Left,
    Right,
}

/// A referring expression.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Expression {
    /// "the small red cube"
    Attribute(Desc),
    /// "the sphere left of the blue cylinder"
    Beside { target: Desc, side: Side, anchor: Desc },
    /// "the object closest to the camera", "the cube farthest from the camera"
    Extreme { target: Desc, nearest: bool },
    /// "the cone behind the green sphere", "the cube in front of the red sphere"
    DepthOrder { target: Desc, behind: bool, anchor: Desc },
}

impl Expression {
    /// Whether resolving it needs depth (what the `depth_expression_share` knob counts).
    pub fn depth_dependent(&self) -> bool {
        matches!(self, Expression::Extreme { .. } | Expression::DepthOrder { .. })
    }
    /// The value of the dataset's `expression_kind` column.
    pub fn kind(&self) -> &'static str {
        match self {
            Expression::Attribute(_) => "attribute",
            Expression::Beside { .. } => "beside",
            Expression::Extreme { .. } => "extreme",
            Expression::DepthOrder { .. } => "depth_order",
        }
    }
    pub fn text(&self) -> String {
        match self {
            Expression::Attribute(d) => format!("the {}", d.text()),
            Expression::Beside { target, side, anchor } => {
                let s = if *side == Side::Left { "left" } else { "right" };
                format!("the {} {s} of the {}", target.text(), anchor.text())
            }
            Expression::Extreme { target, nearest } => {
                let s = if *nearest { "closest to the camera" } else { "farthest from the camera" };
                format!("the {} {s}", target.text())
            }
            Expression::DepthOrder { target, behind, anchor } => {
                let s = if *behind { "behind" } else { "in front of" };
                format!("the {} {s} the {}", target.text(), anchor.text())
            }
        }
    }

    /// Parse the text [`Expression::text`] writes (case-insensitive, surrounding whitespace ignored).
    pub fn parse(text: &str) -> Option<Expression> {
        let lower = text.trim().to_ascii_lowercase();
        let words: Vec<&str> = lower.split_whitespace().collect();
        let mut p = Parser { words: &words, pos: 0 };
        p.word("the")?;
        let target = p.desc()?;
        let expr = if p.done() {
            Expression::Attribute(target)
        } else if p.try_words(&["left", "of", "the"]) {
            Expression::Beside { target, side: Side::Left, anchor: p.desc()? }
        } else if p.try_words(&["right", "of", "the"]) {
            Expression::Beside { target, side: Side::Right, anchor: p.desc()? }
        } else if p.try_words(&["closest", "to", "the", "camera"]) {
            Expression::Extreme { target, nearest: true }
        } else if p.try_words(&["farthest", "from", "the", "camera"]) {
            Expression::Extreme { target, nearest: false }
        } else if p.try_words(&["behind", "the"]) {
            Expression::DepthOrder { target, behind: true, anchor: p.desc()? }
        } else if p.try_words(&["in", "front", "of", "the"]) {
            Expression::DepthOrder { target, behind: false, anchor: p.desc()? }
        } else {
            return None;
        };
        p.done().then_some(expr)
    }
}

struct Parser<'a> {
    words: &'a [&'a str],
    pos: usize,
}

impl Parser<'_> {
    fn done(&self) -> bool {
        self.pos == self.words.len()
    }
    fn word(&mut self, w: &str) -> Option<()> {
        (self.words.get(self.pos) == Some(&w)).then(|| self.pos += 1)
    }
    fn try_words(&mut self, ws: &[&str]) -> bool {
        if self.words.len() >= self.pos + ws.len() && self.words[self.pos..self.pos + ws.len()] == *ws {
            self.pos += ws.len();
            true
        } else {
            false
        }
    }
    fn desc(&mut self) -> Option<Desc> {
        let mut d = Desc { size: None, colour: None, shape: None };
        if let Some(s) = [Size::Small, Size::Large].into_iter().find(|s| self.words.get(self.pos) == Some(&s.name())) {
            d.size = Some(s);
            self.pos += 1;
        }
        if let Some(c) = Colour::ALL.into_iter().find(|c| self.words.get(self.pos) == Some(&c.name())) {
            d.colour = Some(c);
            self.pos += 1;
        }
        if let Some(s) = Shape::ALL.into_iter().find(|s| self.words.get(self.pos) == Some(&s.name())) {
            d.shape = Some(s);
            self.pos += 1;
        } else {
            self.word("object")?;
        }
        Some(d)
    }
}

/// What the resolver knows about one object: attributes, where its centre appears in the image, its centre's
/// z-depth, and how many pixels of it are visible.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ObjInfo {
    pub id: u8,
    pub shape: Shape,
    pub colour: Colour,
    pub size: Size,
    /// Image x of the 3D centre, pixels.
    pub image_x: f32,
    /// z-depth of the 3D centre, metres.
    pub depth: f32,
    pub visible_pixels: usize,
}

/// Margins that make a relation clear-cut; candidates inside a margin make the expression ambiguous.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Margins {
    /// Left/right: centres at least this many pixels apart.
    pub side_px: f32,
    /// Depth order: the farther centre is at least this factor deeper.
    pub depth_ratio: f32,
}

/// The resolver's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    Unique(u8),
    NoMatch,
    Several,
    /// A candidate sits inside a relation's margin, or the anchor is not unique.
    Ambiguous,
}

/// Which visible object (`visible_pixels > 0`) an expression picks.
pub fn resolve(expr: &Expression, objects: &[ObjInfo], m: &Margins) -> Resolution {
    let visible: Vec<&ObjInfo> = objects.iter().filter(|o| o.visible_pixels > 0).collect();
    let unique = |d: &Desc| -> Option<&ObjInfo> {
        let mut it = visible.iter().filter(|o| d.matches(o));
        let first = it.next()?;
        it.next().is_none().then_some(*first)
    };
    let verdict = |hits: Vec<u8>, ambiguous: bool| {
        if ambiguous {
            Resolution::Ambiguous
        } else {
            match hits.as_slice() {
                [] => Resolution::NoMatch,
                [one] => Resolution::Unique(*one),
                _ => Resolution::Several,
            }
        }
    };
    match expr {
        Expression::Attribute(d) => {
            let hits: Vec<u8> = visible.iter().filter(|o| d.matches(o)).map(|o| o.id).collect();
            verdict(hits, false)
        }
        Expression::Beside { target, side, anchor } => {
            let Some(a) = unique(anchor) else { return Resolution::Ambiguous };
            let mut hits = Vec::new();
            let mut ambiguous = false;
            for o in visible.iter().filter(|o| o.id != a.id && target.matches(o)) {
                let dx = o.image_x - a.image_x;
                if dx.abs() < m.side_px {
                    ambiguous = true;
                } else if (dx < 0.0) == (*side == Side::Left) {
                    hits.push(o.id);
                }
            }
            verdict(hits, ambiguous)
        }
        Expression::Extreme { target, nearest } => {
            let mut c: Vec<&&ObjInfo> = visible.iter().filter(|o| target.matches(o)).collect();
            if c.len() < 2 {
                return if c.is_empty() { Resolution::NoMatch } else { Resolution::Ambiguous };
            }
            c.sort_by(|a, b| a.depth.total_cmp(&b.depth));
            if !*nearest {
                c.reverse();
            }
            let (best, second) = (c[0].depth, c[1].depth);
            let ratio = if best < second { second / best } else { best / second };
            if ratio < m.depth_ratio { Resolution::Ambiguous } else { Resolution::Unique(c[0].id) }
        }
        Expression::DepthOrder { target, behind, anchor } => {
            let Some(a) = unique(anchor) else { return Resolution::Ambiguous };
            let mut hits = Vec::new();
            let mut ambiguous = false;
            for o in visible.iter().filter(|o| o.id != a.id && target.matches(o)) {
                if o.depth >= a.depth * m.depth_ratio {
                    if *behind {
                        hits.push(o.id);
                    }
                } else if o.depth * m.depth_ratio <= a.depth {
                    if !*behind {
                        hits.push(o.id);
                    }
                } else {
                    ambiguous = true;
                }
            }
            verdict(hits, ambiguous)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(id: u8, shape: Shape, colour: Colour, size: Size, x: f32, z: f32) -> ObjInfo {
        ObjInfo { id, shape, colour, size, image_x: x, depth: z, visible_pixels: 50 }
    }

    #[test]
    fn text_round_trips_through_the_parser() {
        let d = Desc { size: Some(Size::Small), colour: Some(Colour::Red), shape: Some(Shape::Cube) };
        let a = Desc { size: None, colour: Some(Colour::Blue), shape: None };
        let o = Desc { size: None, colour: None, shape: None };
        for e in [
            Expression::Attribute(d),
            Expression::Beside { target: o, side: Side::Left, anchor: a },
            Expression::Beside { target: d, side: Side::Right, anchor: d },
            Expression::Extreme { target: o, nearest: true },
            Expression::Extreme { target: a, nearest: false },
            Expression::DepthOrder { target: d, behind: true, anchor: a },
            Expression::DepthOrder { target: o, behind: false, anchor: d },
        ] {
            assert_eq!(Expression::parse(&e.text()), Some(e), "{}", e.text());
        }
        assert_eq!(Expression::parse("the small red cube").map(|e| e.text()).as_deref(), Some("the small red cube"));
        assert_eq!(Expression::parse("the red small cube"), None);
        assert_eq!(Expression::parse("the cube left of"), None);
    }

    #[test]
    fn resolver_handles_relations_and_margins() {
        let m = Margins { side_px: 4.0, depth_ratio: 1.1 };
        let objs = [
            obj(1, Shape::Sphere, Colour::Red, Size::Small, 20.0, 4.0),
            obj(2, Shape::Sphere, Colour::Blue, Size::Large, 60.0, 6.0),
            obj(3, Shape::Cube, Colour::Blue, Size::Small, 100.0, 8.0),
        ];
        let sphere = Desc { size: None, colour: None, shape: Some(Shape::Sphere) };
        let cube = Desc { size: None, colour: None, shape: Some(Shape::Cube) };
        let object = Desc { size: None, colour: None, shape: None };
        let blue = Desc { size: None, colour: Some(Colour::Blue), shape: None };
        assert_eq!(resolve(&Expression::Attribute(sphere), &objs, &m), Resolution::Several);
        assert_eq!(resolve(&Expression::Attribute(cube), &objs, &m), Resolution::Unique(3));
        let left = Expression::Beside { target: sphere, side: Side::Left, anchor: cube };
        assert_eq!(resolve(&left, &objs, &m), Resolution::Several);
        let left_of_big = Expression::Beside {
            target: sphere,
            side: Side::Left,
            anchor: Desc { size: Some(Size::Large), colour: None, shape: None },
        };
        assert_eq!(resolve(&left_of_big, &objs, &m), Resolution::Unique(1));
        // the anchor "blue object" is not unique
        let bad = Expression::Beside { target: sphere, side: Side::Left, anchor: blue };
        assert_eq!(resolve(&bad, &objs, &m), Resolution::Ambiguous);
        assert_eq!(resolve(&Expression::Extreme { target: object, nearest: true }, &objs, &m), Resolution::Unique(1));
        assert_eq!(resolve(&Expression::Extreme { target: blue, nearest: false }, &objs, &m), Resolution::Unique(3));
        let behind = Expression::DepthOrder { target: object, behind: true, anchor: cube };
        assert_eq!(resolve(&behind, &objs, &m), Resolution::NoMatch);
        let front = Expression::DepthOrder { target: sphere, behind: false, anchor: cube };
        assert_eq!(resolve(&front, &objs, &m), Resolution::Several);
        // inside the margin: 6.0 vs 6.3 is closer than 1.1x
        let mut near = objs;
        near[2].depth = 6.3;
        let b2 = Expression::DepthOrder { target: sphere, behind: false, anchor: cube };
        assert_eq!(resolve(&b2, &near, &m), Resolution::Ambiguous);
        // hidden objects do not count
        let mut hidden = objs;
        hidden[1].visible_pixels = 0;
        assert_eq!(resolve(&Expression::Attribute(sphere), &hidden, &m), Resolution::Unique(1));
    }
}
