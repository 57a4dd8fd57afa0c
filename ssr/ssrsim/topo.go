package ssrsim

import (
	"fmt"
	"math"
	"math/rand/v2"
)

// topology is an undirected graph over node indices, with positions for
// the geometric ones (a joining node attaches to whoever is in radio range).
type topology struct {
	adj    [][]int
	x, y   []float64
	radius float64
	cell   map[[2]int][]int // geometric index: radius-sized cells
}

func (t *topology) addEdge(a, b int) {
	for _, c := range t.adj[a] {
		if c == b {
			return
		}
	}
	t.adj[a] = append(t.adj[a], b)
	t.adj[b] = append(t.adj[b], a)
}

// meanDegree is the target average neighbour count of the random topology:
// a radio mesh where each router hears a handful of others.
const meanDegree = 8

func makeTopology(kind string, n int, rng *rand.Rand) (*topology, error) {
	t := &topology{adj: make([][]int, n), x: make([]float64, n), y: make([]float64, n)}
	switch kind {
	case "line":
		for i := 0; i+1 < n; i++ {
			t.addEdge(i, i+1)
		}
	case "grid":
		w := int(math.Ceil(math.Sqrt(float64(n))))
		for i := 0; i < n; i++ {
			if (i+1)%w != 0 && i+1 < n {
				t.addEdge(i, i+1)
			}
			if i+w < n {
				t.addEdge(i, i+w)
			}
		}
	case "random":
		t.geometric(1, meanDegree, rng)
	default:
		return nil, fmt.Errorf("ssrsim: unknown topology %q (want line, grid or random)", kind)
	}
	return t, nil
}

// RadioMesh returns the adjacency lists of a connected random radio mesh
// of n routers: a random geometric graph (routers at random spots of a
// width × 1 strip hear each other within the radius that gives about
// degree neighbours each), patched to one component by linking each
// stray component to the largest by its geometrically closest pair, as an
// operator would add a longer link. It is the "random" topology of Sim
// (width 1, degree 8) and the demo's mesh (a wider, sparser strip, so that
// a dozen routers span several hops).
func RadioMesh(n int, width, degree float64, rng *rand.Rand) [][]int {
	t := &topology{adj: make([][]int, n), x: make([]float64, n), y: make([]float64, n)}
	t.geometric(width, degree, rng)
	return t.adj
}

// geometric places the nodes of t at random in a width × 1 strip and links
// those within radio range, then connects the graph.
func (t *topology) geometric(width, degree float64, rng *rand.Rand) {
	n := len(t.adj)
	t.radius = math.Sqrt(degree * width / (math.Pi * float64(n)))
	t.cell = make(map[[2]int][]int)
	for i := range t.x {
		t.place(i, rng.Float64()*width, rng.Float64())
	}
	for i := 0; i < n; i++ {
		for _, j := range t.inRange(i) {
			if j > i {
				t.addEdge(i, j)
			}
		}
	}
	t.connect(nil)
}

// HopDistances returns the hop distance from s to every node of the graph
// adj (-1: unreachable).
func HopDistances(adj [][]int, s int) []int32 {
	return bfs(adj, nil, s, make([]int32, len(adj)), nil)
}

// inRange lists the nodes within radius of i, using the cell index so the
// whole graph builds in O(n).
func (t *topology) inRange(i int) []int {
	var out []int
	cx, cy := t.cellOf(i)
	for dx := -1; dx <= 1; dx++ {
		for dy := -1; dy <= 1; dy++ {
			for _, j := range t.cell[[2]int{cx + dx, cy + dy}] {
				if j != i && math.Hypot(t.x[i]-t.x[j], t.y[i]-t.y[j]) <= t.radius {
					out = append(out, j)
				}
			}
		}
	}
	return out
}

func (t *topology) cellOf(i int) (int, int) {
	return int(t.x[i] / t.radius), int(t.y[i] / t.radius)
}

// place adds node i at (x, y) to the cell index.
func (t *topology) place(i int, x, y float64) {
	t.x[i], t.y[i] = x, y
	cx, cy := t.cellOf(i)
	t.cell[[2]int{cx, cy}] = append(t.cell[[2]int{cx, cy}], i)
}

// connect links every component to the largest one by its geometrically
// closest pair, as a mesh operator would add a longer link.
func (t *topology) connect(alive []bool) {
	for {
		comp := components(t.adj, alive)
		if len(comp) <= 1 {
			return
		}
		main := comp[0]
		for _, c := range comp[1:] {
			if len(c) > len(main) {
				main = c
			}
		}
		for _, c := range comp {
			if &c[0] == &main[0] {
				continue
			}
			bi, bj, bd := -1, -1, math.Inf(1)
			for _, i := range c {
				for _, j := range main {
					if d := math.Hypot(t.x[i]-t.x[j], t.y[i]-t.y[j]); d < bd {
						bi, bj, bd = i, j, d
					}
				}
			}
			t.addEdge(bi, bj)
		}
	}
}

// components returns the connected components of the graph restricted to
// nodes with alive[i] (all when alive is nil).
func components(adj [][]int, alive []bool) [][]int {
	seen := make([]bool, len(adj))
	var out [][]int
	for s := range adj {
		if seen[s] || (alive != nil && !alive[s]) {
			continue
		}
		c := []int{s}
		seen[s] = true
		for k := 0; k < len(c); k++ {
			for _, j := range adj[c[k]] {
				if !seen[j] && (alive == nil || alive[j]) {
					seen[j] = true
					c = append(c, j)
				}
			}
		}
		out = append(out, c)
	}
	return out
}

// bfs returns hop distances from s over live nodes (alive nil: all) into
// dist (-1: unreachable).
func bfs(adj [][]int, alive []bool, s int, dist []int32, queue []int) []int32 {
	for i := range dist {
		dist[i] = -1
	}
	dist[s] = 0
	queue = append(queue[:0], s)
	for k := 0; k < len(queue); k++ {
		u := queue[k]
		for _, v := range adj[u] {
			if dist[v] < 0 && (alive == nil || alive[v]) {
				dist[v] = dist[u] + 1
				queue = append(queue, v)
			}
		}
	}
	return dist
}
