//! Accounting for every command that takes images: before a command reports success it checks
//! that each input it was given ended labelled (abstentions included), failed with a reason,
//! or skipped because an earlier run had labelled it. A shortfall is an error naming the counts,
//! so that no image can disappear from a run that looks complete.

use crate::error::{Error, Result};

/// What became of the inputs of one command (or of one image set of `fit`/`compare`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Images the command was given.
    pub inputs: usize,
    /// Images with a result: labelled rows (abstentions included), embeddings, or training
    /// examples used.
    pub done: usize,
    /// Of `done`, the rows labelled `unknown`.
    pub abstained: usize,
    /// Images listed as failed, with a reason.
    pub failed: usize,
    /// Images left alone because the output already had them (`--resume`).
    pub skipped: usize,
}

impl Tally {
    /// A tally for `inputs` images, nothing done yet.
    pub fn new(inputs: usize) -> Self {
        Tally {
            inputs,
            ..Tally::default()
        }
    }

    /// Images accounted for: done + failed + skipped.
    pub fn accounted(&self) -> usize {
        self.done + self.failed + self.skipped
    }

    /// Inputs neither done, failed nor skipped (0 when the books balance).
    pub fn missing(&self) -> usize {
        self.inputs.saturating_sub(self.accounted())
    }

    /// Checks that every input is accounted for exactly once; `what` names the command or set
    /// (`label`, `fit --train`, ...).
    pub fn check(&self, what: &str) -> Result<()> {
        if self.accounted() == self.inputs && self.abstained <= self.done {
            return Ok(());
        }
        Err(Error::Unaccounted {
            what: what.to_string(),
            inputs: self.inputs,
            done: self.done,
            abstained: self.abstained,
            failed: self.failed,
            skipped: self.skipped,
        })
    }
}

/// What is wrong when `accounted` differs from `inputs`, in words.
pub fn shortfall(inputs: usize, accounted: usize) -> String {
    if accounted < inputs {
        format!(
            "{} not accounted for (neither in the output nor listed as failed)",
            inputs - accounted
        )
    } else {
        format!("{} counted more than once", accounted - inputs)
    }
}

/// An error that stopped a run after `done` of `total` images: it names how many were not
/// processed.
pub fn stopped(done: usize, total: usize, cause: Error) -> Error {
    Error::Stopped {
        done,
        total,
        not_done: total.saturating_sub(done),
        cause: Box::new(cause),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balanced_books_pass() {
        let t = Tally {
            inputs: 10,
            done: 6,
            abstained: 2,
            failed: 3,
            skipped: 1,
        };
        assert_eq!(t.accounted(), 10);
        assert_eq!(t.missing(), 0);
        t.check("label").unwrap();
        Tally::new(0).check("label").unwrap();
    }

    #[test]
    fn a_shortfall_or_surplus_names_the_numbers() {
        let t = Tally {
            inputs: 80,
            done: 23,
            abstained: 0,
            failed: 9,
            skipped: 0,
        };
        assert_eq!(t.missing(), 48);
        let e = t.check("label").unwrap_err();
        assert!(matches!(
            e,
            Error::Unaccounted {
                inputs: 80,
                done: 23,
                failed: 9,
                ..
            }
        ));
        let msg = e.to_string();
        assert!(msg.contains("label: 80 inputs"), "{msg}");
        assert!(msg.contains("48 not accounted for"), "{msg}");
        let over = Tally {
            inputs: 2,
            done: 2,
            failed: 1,
            ..Tally::default()
        };
        let msg = over.check("embed").unwrap_err().to_string();
        assert!(msg.ends_with("1 counted more than once"), "{msg}");
        let bad_abstain = Tally {
            inputs: 1,
            done: 1,
            abstained: 2,
            ..Tally::default()
        };
        assert!(bad_abstain.check("label").is_err());
    }

    #[test]
    fn stopped_names_what_was_not_done() {
        let e = stopped(
            340,
            1000,
            Error::io("out.csv", std::io::Error::other("disk full")),
        );
        assert_eq!(
            e.to_string(),
            "stopped after 340 of 1000 images: out.csv: disk full; 660 not processed"
        );
    }
}
