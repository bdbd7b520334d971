// Package pickle decodes Python pickles (protocols 0 to 5) as data only.
//
// The exporter reads values that Python applications store in Redis (django-redis pickles every
// value that is not a plain int). A real unpickler is a small virtual machine that imports modules
// and calls functions named by the stream; this decoder implements only the opcodes that build
// plain data (None, bool, int, float, str, bytes, bytearray, list, tuple, dict, set, frozenset)
// and refuses every opcode that would name or call Python code with an *UnsafeError. Nothing the
// stream says is ever executed or looked up, and every allocation is bounded by the input size and
// the limits in decode.go, so a hostile value costs at most a failed read.
package pickle
