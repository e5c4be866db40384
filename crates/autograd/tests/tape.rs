//! Tape behaviour: training an MLP with AdamW to near-zero loss, no-grad mode recording nothing,
//! parameter gradients, custom ops, duplicate inputs, and typed errors.

use vffn_autograd::{
    clip_grad_norm, AdamW, AdamWConfig, Error, ParamId, ParamStore, Rng, Tape, Tensor, RMS_NORM_EPS,
};

struct Mlp {
    w1: ParamId,
    b1: ParamId,
    norm: ParamId,
    w2: ParamId,
}

impl Mlp {
    fn new(
        store: &mut ParamStore,
        rng: &mut Rng,
        d_in: usize,
        hidden: usize,
        classes: usize,
    ) -> Mlp {
        let mut init = |n: usize, std: f32| (0..n).map(|_| rng.normal() * std).collect::<Vec<_>>();
        let s1 = 1.0 / (d_in as f32).sqrt();
        let s2 = 1.0 / (hidden as f32).sqrt();
        Mlp {
            w1: store
                .add("mlp.w1.weight", &[2 * hidden, d_in], init(2 * hidden * d_in, s1), false)
                .unwrap(),
            b1: store.add("mlp.w1.bias", &[2 * hidden], vec![0.0; 2 * hidden], true).unwrap(),
            norm: store.add("mlp.norm.weight", &[hidden], vec![1.0; hidden], true).unwrap(),
            w2: store
                .add("mlp.w2.weight", &[classes, hidden], init(classes * hidden, s2), false)
                .unwrap(),
        }
    }

    // x [B, d_in] -> logits [B, classes]
    fn forward(&self, tape: &mut Tape, store: &ParamStore, x: &Tensor) -> Tensor {
        let (w1, b1) = (tape.param(store, self.w1), tape.param(store, self.b1));
        let (norm, w2) = (tape.param(store, self.norm), tape.param(store, self.w2));
        let h = tape.linear(x, &w1);
        let h = tape.add(&h, &b1);
        let h = tape.swiglu(&h);
        let h = tape.rms_norm(&h, &norm, RMS_NORM_EPS);
        tape.linear(&h, &w2)
    }
}

fn toy_data(rng: &mut Rng, n: usize, d: usize, classes: usize) -> (Tensor, Vec<u32>) {
    let x = Tensor::randn(&[n, d], 1.0, rng);
    let y = (0..n).map(|_| rng.below(classes) as u32).collect();
    (x, y)
}

#[test]
fn mlp_trains_to_near_zero_loss() {
    let mut rng = Rng::new(42);
    let (n, d, hidden, classes) = (64, 8, 32, 4);
    let mut store = ParamStore::new();
    let mlp = Mlp::new(&mut store, &mut rng, d, hidden, classes);
    // Random labels: the net must memorize them, so near-zero loss means the gradients are right.
    let (x, y) = toy_data(&mut rng, n, d, classes);
    let mut opt = AdamW::new(AdamWConfig { weight_decay: 0.01, ..AdamWConfig::default() }, &store);
    // Linear warm-up over 20 steps, then linear decay to a tenth at the end.
    let lr = |step: u64| 1e-2 * ((step + 1) as f32 / 20.0).min(1.0 - 0.9 * step as f32 / 400.0);
    let mut first = None;
    let mut last = f32::NAN;
    for step in 0..400 {
        let mut tape = Tape::new();
        let logits = mlp.forward(&mut tape, &store, &x);
        let loss = tape.cross_entropy(&logits, &y);
        last = loss.item();
        first.get_or_insert(last);
        let grads = tape.backward(&loss).unwrap();
        store.accumulate_grads(grads);
        clip_grad_norm(&mut store, 1.0);
        opt.step(&mut store, lr(step)).unwrap();
        store.zero_grad();
    }
    let first = first.unwrap();
    assert!(first > 1.0, "initial loss {first}");
    assert!(last < 0.02, "final loss {last} (initial {first})");
}

#[test]
fn no_grad_records_nothing_and_computes_the_same() {
    let mut rng = Rng::new(1);
    let mut store = ParamStore::new();
    let mlp = Mlp::new(&mut store, &mut rng, 8, 16, 4);
    let (x, y) = toy_data(&mut rng, 16, 8, 4);

    let mut tape = Tape::no_grad();
    let logits = mlp.forward(&mut tape, &store, &x);
    let loss = tape.cross_entropy(&logits, &y);
    assert_eq!(tape.num_nodes(), 0);
    assert!(!loss.is_tracked());
    assert!(matches!(tape.backward(&loss), Err(Error::NotTracked)));

    let mut tape = Tape::new();
    let logits2 = mlp.forward(&mut tape, &store, &x);
    let loss2 = tape.cross_entropy(&logits2, &y);
    // 4 parameter leaves + linear, add, swiglu, rms_norm, linear, cross_entropy.
    assert_eq!(tape.num_nodes(), 10);
    assert_eq!(logits.data(), logits2.data());
    assert_eq!(loss.item(), loss2.item());

    // Ops on untracked inputs record nothing even on a recording tape.
    let mut tape = Tape::new();
    let a = tape.silu(&x);
    let _ = tape.sum(&a);
    assert_eq!(tape.num_nodes(), 0);
}

#[test]
fn custom_op_duplicate_inputs_and_param_grads() {
    let mut store = ParamStore::new();
    let w = store.add("w", &[3], vec![1.0, 2.0, 3.0], false).unwrap();
    let mut tape = Tape::new();
    let wt = tape.param(&store, w);
    // A custom op out = a ⊙ b with a hand-written backward, fed the same tensor twice: d(w²)=2w.
    let prod: Vec<f32> = wt.data().iter().map(|v| v * v).collect();
    let out = Tensor::from_vec(&[3], prod).unwrap();
    let (a, b) = (wt.clone(), wt.clone());
    let sq = tape.custom(&[&wt, &wt], out, move |g, grads| {
        let [da, db] = grads else { unreachable!() };
        let ga: Vec<f32> = g.iter().zip(b.data()).map(|(g, b)| g * b).collect();
        let gb: Vec<f32> = g.iter().zip(a.data()).map(|(g, a)| g * a).collect();
        da.as_mut().unwrap().add(&ga);
        db.as_mut().unwrap().add(&gb);
    });
    let s = tape.sum(&sq);
    // Use w a second time through a view, so its gradient accumulates across two ops.
    let head = wt.narrow_rows(1, 2).unwrap();
    let s2 = tape.sum(&head);
    let total = tape.add(&s, &s2);
    let grads = tape.backward(&total).unwrap();
    assert_eq!(grads.param(w).unwrap(), &[2.0, 5.0, 7.0]);
    store.accumulate_grads(grads);
    assert_eq!(store.get(w).grad().unwrap(), &[2.0, 5.0, 7.0]);
    // A second backward accumulates into the store (micro-batches).
    let mut tape = Tape::new();
    let wt = tape.param(&store, w);
    let s = tape.sum(&wt);
    store.accumulate_grads(tape.backward(&s).unwrap());
    assert_eq!(store.get(w).grad().unwrap(), &[3.0, 6.0, 8.0]);
}

#[test]
fn typed_errors() {
    assert!(matches!(Tensor::from_vec(&[2, 3], vec![0.0; 5]), Err(Error::ShapeData { .. })));
    let t = Tensor::zeros(&[2, 3]);
    assert!(matches!(t.reshape(&[4]), Err(Error::Reshape { .. })));
    assert!(matches!(t.narrow_rows(1, 2), Err(Error::Narrow { .. })));
    let mut store = ParamStore::new();
    store.add("a", &[1], vec![0.0], false).unwrap();
    assert!(matches!(store.add("a", &[1], vec![0.0], false), Err(Error::DuplicateParam(_))));
    let mut tape = Tape::new();
    let x = tape.watch(&t);
    let y = tape.silu(&x);
    assert!(matches!(tape.backward(&y), Err(Error::NotScalar(_))));
    let mut tape = Tape::new();
    let x = tape.watch(&t);
    let y = tape.silu(&x);
    assert!(matches!(tape.backward_with_grad(&y, &[1.0]), Err(Error::SeedLength { .. })));
}

#[test]
fn training_is_deterministic() {
    let run = || {
        let mut rng = Rng::new(9);
        let mut store = ParamStore::new();
        let mlp = Mlp::new(&mut store, &mut rng, 8, 16, 4);
        let (x, y) = toy_data(&mut rng, 32, 8, 4);
        let mut opt = AdamW::new(AdamWConfig::default(), &store);
        for _ in 0..5 {
            let mut tape = Tape::new();
            let logits = mlp.forward(&mut tape, &store, &x);
            let loss = tape.cross_entropy(&logits, &y);
            store.accumulate_grads(tape.backward(&loss).unwrap());
            opt.step(&mut store, 1e-2).unwrap();
            store.zero_grad();
        }
        store.iter().flat_map(|(_, p)| p.data().to_vec()).collect::<Vec<f32>>()
    };
    assert_eq!(run(), run());
}

#[test]
fn thread_count_does_not_change_results() {
    // Shapes large enough that every parallel loop splits into several tasks.
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let mut rng = Rng::new(3);
            let (rows, d, vocab) = (300, 128, 500);
            let x0 = Tensor::randn(&[rows, d], 1.0, &mut rng);
            let w0 = Tensor::randn(&[2 * d, d], 0.1, &mut rng);
            let n0 = Tensor::randn(&[d], 1.0, &mut rng);
            let o0 = Tensor::randn(&[vocab, d], 0.1, &mut rng);
            let idx: Vec<u32> = (0..rows).map(|_| rng.below(rows / 2) as u32).collect();
            let ids: Vec<u32> = (0..rows / 2).map(|_| rng.below(vocab) as u32).collect();
            let mut tape = Tape::new();
            let (x, w, n, o) = (tape.watch(&x0), tape.watch(&w0), tape.watch(&n0), tape.watch(&o0));
            let h = tape.rms_norm(&x, &n, RMS_NORM_EPS);
            let h = tape.linear(&h, &w);
            let h = tape.swiglu(&h);
            let p = tape.softmax(&h);
            let h = tape.mul(&h, &p);
            let ht = tape.transpose(&h);
            let wts = tape.mean_rows(&ht);
            let wts = tape.watch(&wts.detach()); // [rows] weights, a leaf of their own
            let pooled = tape.scatter_add(&h, &idx, Some(&wts), rows / 2);
            let logits = tape.linear(&pooled, &o);
            let loss = tape.cross_entropy(&logits, &ids);
            let g = tape.backward(&loss).unwrap();
            let mut all = vec![loss.item()];
            for t in [&x, &w, &n, &o, &wts] {
                all.extend_from_slice(g.get(t).unwrap());
            }
            all
        })
    };
    let one = run(1);
    assert_eq!(one, run(2));
    assert_eq!(one, run(3));
}
