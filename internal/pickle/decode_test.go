package pickle

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/celery-exporter/celery_exporter/test/harness"
)

// canon renders a decoded value the way testdata/gen.py's canon() renders the Python value.
func canon(v any) string {
	switch v := v.(type) {
	case nil:
		return "N"
	case bool:
		if v {
			return "T"
		}
		return "F"
	case int64:
		return fmt.Sprintf("i%d", v)
	case *big.Int:
		return "i" + v.String()
	case float64:
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], math.Float64bits(v))
		return "f" + hex.EncodeToString(b[:])
	case string:
		return "s" + hex.EncodeToString([]byte(v))
	case []byte:
		return "b" + hex.EncodeToString(v)
	case ByteArray:
		return "B" + hex.EncodeToString(v)
	case Tuple:
		return "(" + canonJoin(v) + ")"
	case *List:
		return "[" + canonJoin(v.Items) + "]"
	case *Dict:
		parts := make([]string, len(v.Items))
		for i, it := range v.Items {
			parts[i] = canon(it.Key) + ":" + canon(it.Value)
		}
		return "{" + strings.Join(parts, ",") + "}"
	case *Set:
		parts := make([]string, len(v.Items))
		for i, it := range v.Items {
			parts[i] = canon(it)
		}
		sort.Strings(parts)
		if v.Frozen {
			return "F{" + strings.Join(parts, ",") + "}"
		}
		return "S{" + strings.Join(parts, ",") + "}"
	default:
		return fmt.Sprintf("<%T>", v)
	}
}

func canonJoin(items []any) string {
	parts := make([]string, len(items))
	for i, it := range items {
		parts[i] = canon(it)
	}
	return strings.Join(parts, ",")
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// checkGolden decodes every value_pN.pickle in dir and compares it with value_pN.canon.
func checkGolden(t *testing.T, dir string, protocols []int) {
	t.Helper()
	for _, p := range protocols {
		t.Run(fmt.Sprintf("protocol%d", p), func(t *testing.T) {
			data := mustRead(t, filepath.Join(dir, fmt.Sprintf("value_p%d.pickle", p)))
			want := strings.TrimSpace(string(mustRead(t, filepath.Join(dir, fmt.Sprintf("value_p%d.canon", p)))))
			v, err := Decode(data)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if got := canon(v); got != want {
				t.Errorf("decoded value differs from Python's\n got: %.400s\nwant: %.400s", got, want)
			}
		})
	}
}

func TestDecodeCommittedGolden(t *testing.T) {
	checkGolden(t, "testdata", []int{0, 2, 4, 5})
}

func TestDecodeForcedModeFixture(t *testing.T) {
	// The bytes of the seed app's breaker as django-redis writes them (pickle protocol 4, from
	// test/fixtures/capture-5.2.6/django_redis_forced_mode_simulated.txt).
	raw := "\x80\x04\x95_\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x04mode\x94\x8c\nwrite_only\x94\x8c\x06reason\x94\x8c\x14consecutive_failures\x94\x8c\x05until\x94GA\xda\xc2\xbc\xe1v\xf0\t\x8c\tforced_at\x94GA\xda\xc2\xbc\x96v\xf0\tu."
	v, err := Decode([]byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	d, ok := v.(*Dict)
	if !ok {
		t.Fatalf("got %T, want *Dict", v)
	}
	for key, want := range map[string]string{"mode": "write_only", "reason": "consecutive_failures"} {
		if got, ok := d.Get(key); got != want {
			t.Errorf("Get(%q) = %v, %v; want %q", key, got, ok, want)
		}
	}
	until, _ := d.Get("until")
	forcedAt, _ := d.Get("forced_at")
	if u, f := until.(float64), forcedAt.(float64); u-f != 300 {
		t.Errorf("until - forced_at = %v, want 300 (the ttl)", u-f)
	}
	if d.Len() != 4 {
		t.Errorf("Len = %d, want 4", d.Len())
	}
}

func TestDecodeHandcrafted(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
	}{
		{"python2 STRING with escapes", "S'a\\nb\\x41\\101\\''\n.", "s" + hex.EncodeToString([]byte("a\nbAA'"))},
		{"python2 SHORT_BINSTRING", "U\x03abc.", "s616263"},
		{"python2 BINSTRING", "T\x03\x00\x00\x00abc.", "s616263"},
		{"protocol 0 bools", "(I01\nI00\nt.", "(T,F)"},
		{"protocol 0 long", "L123456789012345678901234567890L\n.", "i123456789012345678901234567890"},
		{"protocol 0 negative int", "I-5\n.", "i-5"},
		{"LONG1 zero length", "\x80\x02\x8a\x00.", "i0"},
		{"LONG1 negative", "\x80\x02\x8a\x01\xff.", "i-1"},
		{"LONG4", "\x80\x02\x8b\x02\x00\x00\x00\x00\x01.", "i256"},
		{"POP discards a MARK", "N(0.", "N"},
		{"POP_MARK", "N(NN1.", "N"},
		{"DUP", "\x80\x02K\x052\x86.", "(i5,i5)"},
		{"dict duplicate key keeps the last value, first position", "(K\x01K\x02K\x01K\x03d.", "{i1:i3}"},
		{"1 and 1.0 and True are one key", "}(K\x01K\x02G?\xf0\x00\x00\x00\x00\x00\x00K\x03\x88K\x04u.", "{i1:i4}"},
		{"bytes after STOP ignored", "N.garbage", "N"},
		{"FLOAT text", "F2.5\n.", "f4004000000000000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, err := Decode([]byte(tc.in))
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if got := canon(v); got != tc.want {
				t.Errorf("got %s, want %s", got, tc.want)
			}
		})
	}
}

func TestDecodeCycle(t *testing.T) {
	// l = []; l.append(l) at protocol 2: EMPTY_LIST BINPUT 0 BINGET 0 APPEND STOP.
	v, err := Decode([]byte("\x80\x02]q\x00h\x00a."))
	if err != nil {
		t.Fatal(err)
	}
	l := v.(*List)
	if len(l.Items) != 1 || l.Items[0] != any(l) {
		t.Errorf("the list does not contain itself: %#v", l.Items)
	}
}

func TestDecodeRefused(t *testing.T) {
	for _, tc := range []struct {
		name, in     string
		opcode, glob string
	}{
		{"GLOBAL", "cos\nsystem\n(S'true'\ntR.", "GLOBAL", "os.system"},
		{"STACK_GLOBAL", "\x80\x04\x8c\x05posix\x8c\x06system\x93.", "STACK_GLOBAL", "posix.system"},
		{"STACK_GLOBAL of non-strings", "\x80\x04K\x01K\x02\x93.", "STACK_GLOBAL", ""},
		{"INST", "(ios\nsystem\n.", "INST", "os.system"},
		{"REDUCE alone", "N)R.", "REDUCE", ""},
		{"BUILD", "}}b.", "BUILD", ""},
		{"OBJ", "(No.", "OBJ", ""},
		{"NEWOBJ", "\x80\x02N)\x81.", "NEWOBJ", ""},
		{"NEWOBJ_EX", "\x80\x04N)}\x92.", "NEWOBJ_EX", ""},
		{"EXT1", "\x80\x02\x82\x01.", "EXT1", ""},
		{"EXT2", "\x80\x02\x83\x01\x00.", "EXT2", ""},
		{"EXT4", "\x80\x02\x84\x01\x00\x00\x00.", "EXT4", ""},
		{"PERSID", "Pabc\n.", "PERSID", ""},
		{"BINPERSID", "NQ.", "BINPERSID", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, err := Decode([]byte(tc.in))
			var u *UnsafeError
			if !errors.As(err, &u) {
				t.Fatalf("Decode = %v, %v; want *UnsafeError", v, err)
			}
			if u.Opcode != tc.opcode || u.Global != tc.glob {
				t.Errorf("got %s %q, want %s %q", u.Opcode, u.Global, tc.opcode, tc.glob)
			}
			if !IsUnsafe(fmt.Errorf("wrapped: %w", err)) {
				t.Error("IsUnsafe does not see through wrapping")
			}
		})
	}
}

func TestDecodeInvalid(t *testing.T) {
	for _, tc := range []struct {
		name, in, wantErr string
	}{
		{"empty", "", "truncated"},
		{"no STOP", "\x80\x04N", "truncated"},
		{"STOP on empty stack", ".", "stack underflow"},
		{"string longer than input", "\x80\x04\x8c\xffab.", "truncated"},
		{"BINUNICODE8 huge length", "\x80\x04\x8d\xff\xff\xff\xff\xff\xff\xff\x7f.", "truncated"},
		{"BINBYTES8 huge length", "\x80\x04\x8e\xff\xff\xff\xff\xff\xff\xff\xff.", "truncated"},
		{"FRAME beyond input", "\x80\x04\x95\xff\x00\x00\x00\x00\x00\x00\x00N.", "truncated"},
		{"LONG4 over the limit", "\x80\x02\x8b\x00\x00\x01\x00" + strings.Repeat("\x00", 70000) + ".", "exceeds the limit"},
		{"LONG4 negative length", "\x80\x02\x8b\xff\xff\xff\xff.", "negative length"},
		{"unknown protocol", "\x80\x06N.", "unsupported pickle protocol 6"},
		{"unknown opcode", "\xffN.", "unknown opcode 0xff"},
		{"memo miss", "\x80\x02h\x05.", "memo key 5 not found"},
		{"APPEND to a dict", "}Na.", "APPEND to a dict"},
		{"SETITEM on a list", "]NNs.", "SETITEM on a list"},
		{"list as dict key", "}]Ns.", "unhashable type: 'list'"},
		{"set as dict key", "\x80\x04}\x8fNs.", "unhashable type: 'set'"},
		{"TUPLE without MARK", "NNt.", "no MARK"},
		{"TUPLE2 across a MARK", "N(N\x86.", "stack underflow"},
		{"APPEND pops below MARK", "](Na(a.", "stack underflow"},
		{"ADDITEMS to frozenset", "\x80\x04(\x91(N\x90.", "ADDITEMS to a set"},
		{"invalid UTF-8", "\x80\x04\x8c\x01\xff.", "not valid UTF-8"},
		{"NEXT_BUFFER", "\x80\x05\x97.", "out-of-band"},
		{"READONLY_BUFFER", "\x80\x05N\x98.", "out-of-band"},
		{"bad STRING quoting", "Sabc\n.", "must be quoted"},
		{"bad FLOAT", "Fabc\n.", "FLOAT"},
		{"over MaxInputBytes", strings.Repeat("N", MaxInputBytes+1), "exceeds the limit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, err := Decode([]byte(tc.in))
			var f *FormatError
			if !errors.As(err, &f) {
				t.Fatalf("Decode = %v, %v; want *FormatError", v, err)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %q does not contain %q", err, tc.wantErr)
			}
		})
	}
}

// TestDecodeExponentialKeys: a tuple made of itself twice, 60 levels deep through the memo, has
// 2^60 leaves; hashing it as a dict key must stay linear.
func TestDecodeExponentialKeys(t *testing.T) {
	var b strings.Builder
	b.WriteString("\x80\x02K\x01q\x00")
	for i := 0; i < 60; i++ {
		fmt.Fprintf(&b, "h\x00h\x00\x86q\x00")
	}
	b.WriteString("0}h\x00Ns.")
	v, err := Decode([]byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	if d := v.(*Dict); d.Len() != 1 {
		t.Errorf("Len = %d", d.Len())
	}
}

// generate runs gen.py into a temporary directory, with a 70 kB value to cross frame boundaries.
func generate(t *testing.T, touch string) string {
	t.Helper()
	harness.RequirePython(t, "pickle")
	dir := t.TempDir()
	out, err := exec.Command(harness.Python, "testdata/gen.py", dir, touch, "--big").CombinedOutput()
	if err != nil {
		t.Fatalf("gen.py: %v\n%s", err, out)
	}
	return dir
}

func TestDecodePythonGenerated(t *testing.T) {
	dir := generate(t, filepath.Join(t.TempDir(), "unused"))
	checkGolden(t, dir, []int{0, 1, 2, 3, 4, 5})
	v, err := Decode(mustRead(t, filepath.Join(dir, "forced_mode.pickle")))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := canon(v), strings.TrimSpace(string(mustRead(t, filepath.Join(dir, "forced_mode.canon")))); got != want {
		t.Errorf("forced mode: got %s, want %s", got, want)
	}
}

// TestDecodeMaliciousNothingRuns: Python's own pickle.loads on these bytes runs `touch PATH`
// (checked first, so the test proves the pickles are really armed); Decode refuses them and the
// file never appears.
func TestDecodeMaliciousNothingRuns(t *testing.T) {
	base := t.TempDir()
	touch := filepath.Join(base, "pwned")
	dir := generate(t, touch)

	control := filepath.Join(base, "armed")
	armed := strings.Replace(string(mustRead(t, filepath.Join(dir, "evil_p2.pickle"))), touch, control, 1)
	if len(control) != len(touch) {
		t.Fatal("control path must have the length of the touch path (protocol 2 strings are length-prefixed)")
	}
	cmd := exec.Command(harness.Python, "-c", "import sys, pickle; pickle.loads(sys.stdin.buffer.read())")
	cmd.Stdin = strings.NewReader(armed)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("python control run: %v\n%s", err, out)
	}
	if _, err := os.Stat(control); err != nil {
		t.Fatalf("positive control: python's pickle.loads did not run the payload: %v", err)
	}

	for p := 0; p <= 5; p++ {
		data := mustRead(t, filepath.Join(dir, fmt.Sprintf("evil_p%d.pickle", p)))
		_, err := Decode(data)
		var u *UnsafeError
		if !errors.As(err, &u) {
			t.Fatalf("protocol %d: Decode error = %v, want *UnsafeError", p, err)
		}
		want := "GLOBAL"
		if p >= 4 {
			want = "STACK_GLOBAL"
		}
		if u.Opcode != want || u.Global != "posix.system" {
			t.Errorf("protocol %d: refused %s %q, want %s posix.system", p, u.Opcode, u.Global, want)
		}
	}
	if _, err := os.Stat(touch); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s exists: the payload ran (stat: %v)", touch, err)
	}
}

func TestDecodeCommittedMalicious(t *testing.T) {
	for _, p := range []int{0, 2, 4} {
		_, err := Decode(mustRead(t, filepath.Join("testdata", fmt.Sprintf("evil_p%d.pickle", p))))
		if !IsUnsafe(err) {
			t.Errorf("protocol %d: error = %v, want *UnsafeError", p, err)
		}
	}
}

// walk checks that only the documented types come out, without looping on cycles.
func walk(t *testing.T, v any, seen map[any]bool) {
	switch v := v.(type) {
	case nil, bool, int64, *big.Int, float64, string, []byte, ByteArray:
	case Tuple:
		for _, x := range v {
			walk(t, x, seen)
		}
	case *List:
		if seen[v] {
			return
		}
		seen[v] = true
		for _, x := range v.Items {
			walk(t, x, seen)
		}
	case *Dict:
		if seen[v] {
			return
		}
		seen[v] = true
		for _, it := range v.Items {
			walk(t, it.Key, seen)
			walk(t, it.Value, seen)
		}
	case *Set:
		if seen[v] {
			return
		}
		seen[v] = true
		for _, x := range v.Items {
			walk(t, x, seen)
		}
	default:
		t.Fatalf("undocumented type %T", v)
	}
}

func FuzzDecode(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.pickle")
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, s := range []string{"\x80\x02]q\x00h\x00a.", "(I01\nI00\nt.", "S'a\\nb'\n.", "\x80\x05\x96\x02\x00\x00\x00\x00\x00\x00\x00ab."} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := Decode(data)
		if err != nil {
			var u *UnsafeError
			var fe *FormatError
			if !errors.As(err, &u) && !errors.As(err, &fe) {
				t.Fatalf("untyped error %T: %v", err, err)
			}
			return
		}
		walk(t, v, map[any]bool{})
	})
}
