package pickle

// Values produced by Decode, by Python type:
//
//	None               nil
//	bool               bool
//	int                int64, or *big.Int when it does not fit
//	float              float64
//	str                string
//	bytes              []byte
//	bytearray          ByteArray
//	tuple              Tuple
//	list               *List
//	dict               *Dict
//	set, frozenset     *Set (Frozen tells which)
//
// Lists, dicts and sets are pointers because a pickle may refer to the same object twice (its
// memo), and may even build a cycle (a list that contains itself): code walking a decoded value
// must not assume it is a tree.

// Tuple is a Python tuple.
type Tuple []any

// ByteArray is a Python bytearray (protocol 5 BYTEARRAY8, or protocol 2-4 via a reduce, which is
// refused).
type ByteArray []byte

// List is a Python list.
type List struct {
	Items []any
}

// Set is a Python set or frozenset.
type Set struct {
	Items  []any
	Frozen bool
	index  map[string]struct{}
}

// DictItem is one key/value pair of a Dict.
type DictItem struct {
	Key   any
	Value any
}

// Dict is a Python dict, keeping insertion order like Python does.
type Dict struct {
	Items []DictItem
	index map[string]int
}

// Len is the number of keys.
func (d *Dict) Len() int { return len(d.Items) }

// Get returns the value under a str key.
func (d *Dict) Get(key string) (any, bool) {
	if d == nil {
		return nil, false
	}
	i, ok := d.index[strKey(key)]
	if !ok {
		return nil, false
	}
	return d.Items[i].Value, true
}

// set stores value under key (k is its hash key), replacing an equal key's value as Python does.
func (d *Dict) set(k string, key, value any) {
	if d.index == nil {
		d.index = map[string]int{}
	}
	if i, ok := d.index[k]; ok {
		d.Items[i].Value = value
		return
	}
	d.index[k] = len(d.Items)
	d.Items = append(d.Items, DictItem{Key: key, Value: value})
}

func (s *Set) add(k string, v any) {
	if s.index == nil {
		s.index = map[string]struct{}{}
	}
	if _, ok := s.index[k]; ok {
		return
	}
	s.index[k] = struct{}{}
	s.Items = append(s.Items, v)
}

func strKey(s string) string { return "s" + s }
