//! Generated multilayer perceptrons (`64 → 256 → 128 → 1|2`, ReLU, Sigmoid or Softmax), written
//! as ONNX graphs built from tract-onnx's protobuf types.
//!
//! The two hidden layers are drawn (He initialisation, with the input standardisation folded
//! into the first layer, as exporters fold a scaler); the output layer is fitted by ridge
//! regression on the second hidden layer's activations to a known ground-truth logit, so that
//! the network's outputs are sane probabilities that track the truth. About 49k multiply-adds per
//! row, the standard workload's MLP cost. [`Mlp::predict`] is the reference evaluation (f64
//! arithmetic on the f32 weights the file stores) that the bundle's golden rows record.

use super::fit::{column_moments, normal, ridge, sigmoid};
use prost::Message;
use rand::Rng;
use tract_onnx::pb::{
    self, attribute_proto::AttributeType, tensor_shape_proto::dimension, type_proto,
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

/// Widths of the hidden layers.
pub(crate) const HIDDEN: [usize; 2] = [256, 128];
/// ONNX opset the graphs declare (Gemm, Relu, Sigmoid, Softmax over the last axis).
const OPSET: i64 = 13;
/// `TensorProto.DataType.FLOAT`.
const FLOAT: i32 = 1;

/// How the last layer turns its logit into a probability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Head {
    /// One output column through a Sigmoid: `probability`, `[N, 1]`.
    Sigmoid,
    /// Two columns (negative, positive class) through a Softmax: `probabilities`, `[N, 2]`.
    Softmax,
}

impl Head {
    /// The graph output's name, and the column of it that holds the positive class.
    pub fn output(self) -> (&'static str, usize) {
        match self {
            Head::Sigmoid => ("probability", 0),
            Head::Softmax => ("probabilities", 1),
        }
    }
}

/// One dense layer: `y = x W + b`, `W` stored row-major `[inputs, outputs]` as Gemm reads it.
#[derive(Clone, Debug, PartialEq)]
struct Dense {
    inputs: usize,
    outputs: usize,
    w: Vec<f32>,
    b: Vec<f32>,
}

impl Dense {
    fn apply(&self, x: &[f64], relu: bool) -> Vec<f64> {
        let mut y: Vec<f64> = self.b.iter().map(|&b| f64::from(b)).collect();
        for (i, &xi) in x.iter().enumerate() {
            if xi == 0.0 {
                continue;
            }
            let row = &self.w[i * self.outputs..(i + 1) * self.outputs];
            for (yj, &w) in y.iter_mut().zip(row) {
                *yj += xi * f64::from(w);
            }
        }
        if relu {
            y.iter_mut().for_each(|v| *v = v.max(0.0));
        }
        y
    }
}

/// A generated MLP.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Mlp {
    layers: [Dense; 3],
    head: Head,
}

fn he(rng: &mut impl Rng, inputs: usize, outputs: usize) -> Vec<f64> {
    let scale = (2.0 / inputs as f64).sqrt();
    (0..inputs * outputs).map(|_| normal(rng) * scale).collect()
}

/// Draws the hidden layers and fits the output layer to `target` (a logit per row) on `rows`.
pub(crate) fn generate(rows: &[Vec<f32>], target: &[f64], head: Head, rng: &mut impl Rng) -> Mlp {
    let d = rows[0].len();
    let flat: Vec<f64> = rows.iter().flatten().map(|&v| f64::from(v)).collect();
    let (mean, sd) = column_moments(&flat, d);
    // Layer 1 on standardised inputs, folded: w' = w / sd, b' = b − Σ w' × mean.
    let w = he(rng, d, HIDDEN[0]);
    let mut b: Vec<f64> = (0..HIDDEN[0]).map(|_| 0.1 * normal(rng)).collect();
    let mut w1 = vec![0.0f32; d * HIDDEN[0]];
    for i in 0..d {
        for j in 0..HIDDEN[0] {
            let folded = w[i * HIDDEN[0] + j] / sd[i];
            w1[i * HIDDEN[0] + j] = folded as f32;
            b[j] -= f64::from(folded as f32) * mean[i];
        }
    }
    let l1 = Dense {
        inputs: d,
        outputs: HIDDEN[0],
        w: w1,
        b: b.iter().map(|&v| v as f32).collect(),
    };
    let l2 = Dense {
        inputs: HIDDEN[0],
        outputs: HIDDEN[1],
        w: he(rng, HIDDEN[0], HIDDEN[1])
            .iter()
            .map(|&v| v as f32)
            .collect(),
        b: (0..HIDDEN[1]).map(|_| (0.1 * normal(rng)) as f32).collect(),
    };
    let hidden: Vec<f64> = flat
        .chunks_exact(d)
        .flat_map(|x| l2.apply(&l1.apply(x, true), true))
        .collect();
    let (intercept, weights) = ridge(&hidden, target, HIDDEN[1], 1e-3);
    let l3 = match head {
        Head::Sigmoid => Dense {
            inputs: HIDDEN[1],
            outputs: 1,
            w: weights.iter().map(|&v| v as f32).collect(),
            b: vec![intercept as f32],
        },
        // Logits (−z/2, z/2): the positive class's softmax probability is sigmoid(z).
        Head::Softmax => Dense {
            inputs: HIDDEN[1],
            outputs: 2,
            w: weights
                .iter()
                .flat_map(|&v| [(-v / 2.0) as f32, (v / 2.0) as f32])
                .collect(),
            b: vec![(-intercept / 2.0) as f32, (intercept / 2.0) as f32],
        },
    };
    Mlp {
        layers: [l1, l2, l3],
        head,
    }
}

impl Mlp {
    /// Multiply-adds per row.
    #[cfg(test)]
    pub fn multiply_adds(&self) -> usize {
        self.layers.iter().map(|l| l.inputs * l.outputs).sum()
    }

    /// The positive-class probability of one row.
    pub fn predict(&self, row: &[f32]) -> f64 {
        let x: Vec<f64> = row.iter().map(|&v| f64::from(v)).collect();
        let h = self.layers[1].apply(&self.layers[0].apply(&x, true), true);
        let z = self.layers[2].apply(&h, false);
        match self.head {
            Head::Sigmoid => sigmoid(z[0]),
            Head::Softmax => sigmoid(z[1] - z[0]),
        }
    }

    /// The network as an ONNX model: input `features` `[N, inputs]` f32, output per [`Head`].
    pub fn to_onnx(&self, graph_name: &str, producer_version: &str) -> Vec<u8> {
        let (output, _) = self.head.output();
        let mut initializer = Vec::new();
        let mut node = Vec::new();
        let mut x = "features".to_string();
        for (i, layer) in self.layers.iter().enumerate() {
            let (w, b, y) = (format!("W{i}"), format!("B{i}"), format!("gemm{i}"));
            initializer.push(tensor(&w, &[layer.inputs, layer.outputs], &layer.w));
            initializer.push(tensor(&b, &[layer.outputs], &layer.b));
            node.push(op("Gemm", &[&x, &w, &b], &y, vec![]));
            x = y;
            if i < 2 {
                let y = format!("relu{i}");
                node.push(op("Relu", &[&x], &y, vec![]));
                x = y;
            }
        }
        match self.head {
            Head::Sigmoid => node.push(op("Sigmoid", &[&x], output, vec![])),
            Head::Softmax => node.push(op(
                "Softmax",
                &[&x],
                output,
                vec![AttributeProto {
                    name: "axis".into(),
                    r#type: AttributeType::Int as i32,
                    i: -1,
                    ..Default::default()
                }],
            )),
        }
        let outputs = self.layers[2].outputs;
        let model = ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            }],
            producer_name: "podium-sim".into(),
            producer_version: producer_version.into(),
            graph: Some(GraphProto {
                name: graph_name.into(),
                node,
                initializer,
                input: vec![value_info("features", self.layers[0].inputs)],
                output: vec![value_info(output, outputs)],
                ..Default::default()
            }),
            ..Default::default()
        };
        model.encode_to_vec()
    }
}

fn tensor(name: &str, dims: &[usize], values: &[f32]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: FLOAT,
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn op(kind: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        name: output.into(),
        op_type: kind.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute,
        ..Default::default()
    }
}

/// A `[N, width]` f32 tensor declaration with a symbolic batch.
fn value_info(name: &str, width: usize) -> ValueInfoProto {
    let dim = |value| pb::tensor_shape_proto::Dimension {
        value: Some(value),
        ..Default::default()
    };
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: FLOAT,
                shape: Some(TensorShapeProto {
                    dim: vec![
                        dim(dimension::Value::DimParam("N".into())),
                        dim(dimension::Value::DimValue(width as i64)),
                    ],
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podium_model::manifest::OutputSpec;
    use podium_model::{Columns, Runtime};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn tract_scores_the_graph_as_the_reference_does() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let d = 64;
        let rows: Vec<Vec<f32>> = (0..300)
            .map(|_| {
                (0..d)
                    .map(|j| (normal(&mut rng) * (1 + j % 5) as f64) as f32)
                    .collect()
            })
            .collect();
        let target: Vec<f64> = rows
            .iter()
            .map(|r| -1.0 + 0.3 * f64::from(r[0]) - 0.2 * f64::from(r[1] * r[2]))
            .collect();
        for head in [Head::Sigmoid, Head::Softmax] {
            let mlp = generate(&rows, &target, head, &mut rng);
            assert_eq!(
                mlp.multiply_adds(),
                64 * 256 + 256 * 128 + 128 * mlp.layers[2].outputs
            );
            let tmp = tempfile::tempdir().unwrap();
            let path = tmp.path().join("m.onnx");
            std::fs::write(&path, mlp.to_onnx("m", "test")).unwrap();
            let (tensor, column) = head.output();
            let spec = OutputSpec {
                tensor: Some(tensor.into()),
                column: Some(column),
                ..Default::default()
            };
            let runtime = podium_model::onnx::read(&path, d, &spec).unwrap();
            let cols: Vec<Vec<f32>> = (0..d)
                .map(|c| rows.iter().map(|r| r[c]).collect())
                .collect();
            let slices: Vec<&[f32]> = cols.iter().map(Vec::as_slice).collect();
            let mut out = vec![0.0; rows.len()];
            runtime
                .predict_raw(&Columns::new(&slices, rows.len()).unwrap(), &mut out)
                .unwrap();
            let mut spread = (1.0f64, 0.0f64);
            for (r, &o) in rows.iter().zip(&out) {
                let p = mlp.predict(r);
                spread = (spread.0.min(p), spread.1.max(p));
                assert!((p - f64::from(o)).abs() < 1e-5, "{head:?}: {p} vs {o}");
            }
            assert!(spread.1 - spread.0 > 0.1, "outputs vary: {spread:?}");
        }
    }
}
