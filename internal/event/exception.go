package event

import "bytes"

// ExceptionClass names the exception of a task-failed or task-retried event: the class in the
// repr ("ValueError('boom')" → ValueError). Celery ≥ 5.3 (billiard ≥ 4.0.1) reports hard time
// limits and lost workers as "ExceptionWithTraceback()", created in the pool's parent process; the
// real class is only on the traceback's last line
// ("billiard.exceptions.TimeLimitExceeded: TimeLimitExceeded(1.5,)"), so that line decides then.
func ExceptionClass(repr, traceback []byte) []byte {
	cls := classFromRepr(repr)
	if len(cls) == 0 || string(cls) == "ExceptionWithTraceback" {
		if fromTB := classFromTraceback(traceback); len(fromTB) > 0 {
			return fromTB
		}
	}
	if len(cls) == 0 {
		return []byte("unknown")
	}
	if string(cls) == "Retry" {
		// self.retry(exc=...) reports Retry(Retry(...), KeyError('again'), 0): the cause is what
		// an operator needs to see.
		if cause := retryCause(repr); len(cause) > 0 {
			return cause
		}
	}
	return cls
}

// retryCause finds the first exception repr inside a Retry repr that is not Retry itself.
func retryCause(repr []byte) []byte {
	inner := repr[bytes.IndexByte(repr, '(')+1:]
	for len(inner) > 0 {
		i := bytes.IndexByte(inner, '(')
		if i < 0 {
			return nil
		}
		start := i
		for start > 0 && (isIdentByte(inner[start-1]) || inner[start-1] == '.') {
			start--
		}
		if name := inner[start:i]; isDottedIdent(name) && string(lastSegment(name)) != "Retry" {
			return lastSegment(name)
		}
		inner = inner[i+1:]
	}
	return nil
}

func isIdentByte(c byte) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// needsTraceback reports whether ExceptionClass would look at the traceback for this repr.
func needsTraceback(repr []byte) bool {
	switch string(classFromRepr(repr)) {
	case "", "ExceptionWithTraceback", "Retry":
		return true
	}
	return false
}

// classFromRepr takes the identifier before "(" of a repr, without a module path.
func classFromRepr(repr []byte) []byte {
	repr = bytes.TrimSpace(repr)
	i := bytes.IndexByte(repr, '(')
	if i <= 0 {
		return nil
	}
	name := repr[:i]
	if !isDottedIdent(name) {
		return nil
	}
	return lastSegment(name)
}

// classFromTraceback reads "pkg.module.Class: message" (or "Class" alone) from the last non-empty
// line of a formatted traceback.
func classFromTraceback(tb []byte) []byte {
	tb = bytes.TrimRight(tb, " \t\r\n")
	if len(tb) == 0 {
		return nil
	}
	line := tb
	if i := bytes.LastIndexByte(tb, '\n'); i >= 0 {
		line = tb[i+1:]
	}
	line = bytes.TrimSpace(line)
	if i := bytes.IndexByte(line, ':'); i >= 0 {
		line = line[:i]
	}
	if !isDottedIdent(line) {
		return nil
	}
	return lastSegment(line)
}

func lastSegment(name []byte) []byte {
	if i := bytes.LastIndexByte(name, '.'); i >= 0 {
		return name[i+1:]
	}
	return name
}

func isDottedIdent(b []byte) bool {
	if len(b) == 0 || len(b) > 200 {
		return false
	}
	prevDot := true
	for _, c := range b {
		switch {
		case c == '.':
			if prevDot {
				return false
			}
			prevDot = true
			continue
		case c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z':
		case c >= '0' && c <= '9':
			if prevDot {
				return false
			}
		default:
			return false
		}
		prevDot = false
	}
	return !prevDot
}
