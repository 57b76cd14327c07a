//! Printing to stdout for tools whose output may go to a reader that stops early
//! (`quokka ctl status | head -3`): a closed stdout ends the output quietly, not with a panic.

use std::io::{self, Write};

/// Writes to stdout and flushes. A reader that went away is not an error: the rest of the
/// output is dropped and the tool carries on to its usual exit.
pub fn print(args: std::fmt::Arguments<'_>) -> io::Result<()> {
    let mut out = io::stdout().lock();
    match out.write_fmt(args).and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        result => result,
    }
}

/// `println!` through [`print`]: an `io::Result`, `Ok` when the reader went away.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::stdout::print(format_args!("{}\n", format_args!($($arg)*)))
    };
}
