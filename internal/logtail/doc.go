// Package logtail follows log files by glob, by polling, the way `tail -F` would if it had to
// count every line exactly once.
//
// Files are known by device and inode, not by path: a file renamed by rotation is the same file
// and keeps being drained from the open descriptor (the writer may still be appending to it),
// while the new file at the old path is a new file read from its start. A file that shrinks, or
// whose first bytes change, was truncated in place (copytruncate) and is read again from 0. A line
// is handed on only once its newline arrives; lines over the size limit are skipped and counted.
// Memory is bounded by MaxFiles × (MaxLineBytes + fingerprint) plus one read buffer.
package logtail
