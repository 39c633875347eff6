//! The labelling job's progress display: a bar with images/s and ETA when stderr is a terminal,
//! a line every 10 s otherwise, nothing when quiet. The library reports events; this draws them.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use cliplabel::jobs::label::JobEvent;

/// Draws [`JobEvent`]s on stderr.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    quiet: bool,
    last: Instant,
    start: Instant,
    total: usize,
    done: usize,
}

impl Progress {
    /// A display that stays silent when `quiet`.
    pub fn new(quiet: bool) -> Self {
        Progress {
            bar: None,
            quiet,
            last: Instant::now(),
            start: Instant::now(),
            total: 0,
            done: 0,
        }
    }

    /// Shows one event.
    pub fn event(&mut self, e: JobEvent<'_>) {
        match e {
            JobEvent::Started { total } => self.start(total),
            JobEvent::Failed(f) => self.warn(&format!("warning: {}: {}", f.path, f.error)),
            JobEvent::Advanced(n) => self.add(n),
            JobEvent::Finished => {
                if let Some(b) = &self.bar {
                    b.finish_and_clear();
                }
            }
        }
    }

    fn start(&mut self, total: usize) {
        self.bar = (!self.quiet && std::io::stderr().is_terminal()).then(|| {
            let b = indicatif::ProgressBar::new(total as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} images  {per_sec}  ETA {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b
        });
        self.last = Instant::now();
        self.start = Instant::now();
        self.total = total;
        self.done = 0;
    }

    fn add(&mut self, n: usize) {
        self.done += n;
        if let Some(b) = &self.bar {
            b.inc(n as u64);
        } else if !self.quiet
            && (self.last.elapsed() >= Duration::from_secs(10) || self.done == self.total)
        {
            self.last = Instant::now();
            let rate = self.done as f64 / self.start.elapsed().as_secs_f64().max(1e-9);
            let eta = (self.total - self.done) as f64 / rate.max(1e-9);
            eprintln!(
                "{}/{} images, {rate:.1} images/s, ETA {eta:.0} s",
                self.done, self.total
            );
        }
    }

    fn warn(&self, msg: &str) {
        if self.quiet {
            return;
        }
        match &self.bar {
            Some(b) => b.println(msg),
            None => eprintln!("{msg}"),
        }
    }
}
