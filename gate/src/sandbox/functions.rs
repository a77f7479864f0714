//! Total replacements for the two SQL operators that can fail on a value: `/` and `%`.
//!
//! DataFusion's integer division and remainder return an error on a zero divisor and on
//! `MIN / -1`. An error that happens for one row's value and not for another's tells the
//! operator something about that row, whatever the privacy budget says, so the gate never lets
//! DataFusion's operators run: it rewrites `a / b` to `veil_div(a, b)` and `a % b` to
//! `veil_mod(a, b)`, which yield NULL where the operator would fail (a zero divisor, an
//! overflow) and the same value everywhere else. On floats they follow IEEE 754 (∞ or NaN,
//! never an error), as DataFusion's operators already do.
//!
//! Both take two arguments of the same numeric type (the type DataFusion's type coercion gives
//! both sides of the operator) and return that type, so a rewritten plan keeps its schema.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, ArrowPrimitiveType, AsArray, PrimitiveArray};
use datafusion::arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type,
    UInt16Type, UInt32Type, UInt64Type,
};
use datafusion::common::{Result, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// Name of the total division.
pub const DIV: &str = "veil_div";
/// Name of the total remainder.
pub const MOD: &str = "veil_mod";

/// `veil_div(a, b)`: `a / b`, or NULL where integer division would fail.
pub fn div() -> Arc<ScalarUDF> {
    Arc::new(ScalarUDF::from(Checked::new(Op::Div)))
}

/// `veil_mod(a, b)`: `a % b`, or NULL where the integer remainder would fail.
pub fn modulo() -> Arc<ScalarUDF> {
    Arc::new(ScalarUDF::from(Checked::new(Op::Mod)))
}

/// True when `veil_div`/`veil_mod` accept two arguments of this type.
pub fn supports(data_type: &DataType) -> bool {
    data_type.is_integer() || matches!(data_type, DataType::Float32 | DataType::Float64)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Op {
    Div,
    Mod,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Checked {
    op: Op,
    signature: Signature,
}

impl Checked {
    fn new(op: Op) -> Self {
        Self {
            op,
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for Checked {
    fn name(&self) -> &str {
        match self.op {
            Op::Div => DIV,
            Op::Mod => MOD,
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types {
            [a, b] if a == b && supports(a) => Ok(a.clone()),
            _ => plan_err!(
                "{} takes two numbers of the same type, not {arg_types:?}",
                self.name()
            ),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let [a, b] = arrays.as_slice() else {
            return exec_err!("{} takes two arguments", self.name());
        };
        let out: ArrayRef = match a.data_type() {
            DataType::Int8 => integers::<Int8Type>(
                a,
                b,
                self.op,
                |x, y| x.checked_div(y),
                |x, y| x.checked_rem(y),
            ),
            DataType::Int16 => integers::<Int16Type>(
                a,
                b,
                self.op,
                |x, y| x.checked_div(y),
                |x, y| x.checked_rem(y),
            ),
            DataType::Int32 => integers::<Int32Type>(
                a,
                b,
                self.op,
                |x, y| x.checked_div(y),
                |x, y| x.checked_rem(y),
            ),
            DataType::Int64 => integers::<Int64Type>(
                a,
                b,
                self.op,
                |x, y| x.checked_div(y),
                |x, y| x.checked_rem(y),
            ),
            DataType::UInt8 => integers::<UInt8Type>(
                a,
                b,
                self.op,
                |x, y| x.checked_div(y),
                |x, y| x.checked_rem(y),
            ),
            DataType::UInt16 => integers::<UInt16Type>(
                a,
                b,
                self.op,
                |x, y| x.checked_div(y),
                |x, y| x.checked_rem(y),
            ),
            DataType::UInt32 => integers::<UInt32Type>(
                a,
                b,
                self.op,
                |x, y| x.checked_div(y),
                |x, y| x.checked_rem(y),
            ),
            DataType::UInt64 => integers::<UInt64Type>(
                a,
                b,
                self.op,
                |x, y| x.checked_div(y),
                |x, y| x.checked_rem(y),
            ),
            DataType::Float32 => floats::<Float32Type>(a, b, self.op, |x, y| x / y, |x, y| x % y),
            DataType::Float64 => floats::<Float64Type>(a, b, self.op, |x, y| x / y, |x, y| x % y),
            other => return exec_err!("{} does not take {other}", self.name()),
        };
        // A scalar call (both arguments constant) answers a scalar, as DataFusion expects.
        if args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)))
            && out.len() == 1
        {
            return Ok(ColumnarValue::Scalar(
                datafusion::scalar::ScalarValue::try_from_array(&out, 0)?,
            ));
        }
        Ok(ColumnarValue::Array(out))
    }
}

/// Element-wise integer division or remainder; NULL where either side is NULL or the checked
/// operation has no answer (a zero divisor, `MIN / -1`).
fn integers<T: ArrowPrimitiveType>(
    a: &ArrayRef,
    b: &ArrayRef,
    op: Op,
    div: impl Fn(T::Native, T::Native) -> Option<T::Native>,
    rem: impl Fn(T::Native, T::Native) -> Option<T::Native>,
) -> ArrayRef {
    let (a, b) = (a.as_primitive::<T>(), b.as_primitive::<T>());
    let out: PrimitiveArray<T> = a
        .iter()
        .zip(b.iter())
        .map(|(x, y)| match (x, y, op) {
            (Some(x), Some(y), Op::Div) => div(x, y),
            (Some(x), Some(y), Op::Mod) => rem(x, y),
            _ => None,
        })
        .collect();
    Arc::new(out)
}

/// Element-wise float division or remainder (IEEE 754: never an error).
fn floats<T: ArrowPrimitiveType>(
    a: &ArrayRef,
    b: &ArrayRef,
    op: Op,
    div: impl Fn(T::Native, T::Native) -> T::Native,
    rem: impl Fn(T::Native, T::Native) -> T::Native,
) -> ArrayRef {
    let (a, b) = (a.as_primitive::<T>(), b.as_primitive::<T>());
    let out: PrimitiveArray<T> = a
        .iter()
        .zip(b.iter())
        .map(|(x, y)| match (x, y) {
            (Some(x), Some(y)) => Some(match op {
                Op::Div => div(x, y),
                Op::Mod => rem(x, y),
            }),
            _ => None,
        })
        .collect();
    Arc::new(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float64Array, Int32Array, Int64Array};
    use datafusion::arrow::datatypes::Field;
    use datafusion::config::ConfigOptions;

    fn call(op: Op, a: ArrayRef, b: ArrayRef) -> Result<ArrayRef> {
        let udf = Checked::new(op);
        let field = Arc::new(Field::new("x", a.data_type().clone(), true));
        let out = udf.invoke_with_args(ScalarFunctionArgs {
            number_rows: a.len(),
            args: vec![ColumnarValue::Array(a), ColumnarValue::Array(b)],
            arg_fields: vec![field.clone(), field.clone()],
            return_field: field,
            config_options: Arc::new(ConfigOptions::default()),
        })?;
        out.into_array(1)
    }

    #[test]
    fn integer_division_is_null_where_the_operator_fails() -> Result<()> {
        let a: ArrayRef = Arc::new(Int64Array::from(vec![
            Some(7),
            Some(i64::MIN),
            Some(5),
            None,
        ]));
        let b: ArrayRef = Arc::new(Int64Array::from(vec![Some(2), Some(-1), Some(0), Some(1)]));
        let out = call(Op::Div, a.clone(), b.clone())?;
        let out = out.as_primitive::<Int64Type>();
        assert_eq!(
            out.iter().collect::<Vec<_>>(),
            vec![Some(3), None, None, None]
        );
        let rem = call(Op::Mod, a, b)?;
        let rem = rem.as_primitive::<Int64Type>();
        assert_eq!(
            rem.iter().collect::<Vec<_>>(),
            vec![Some(1), None, None, None]
        );
        Ok(())
    }

    #[test]
    fn narrow_integers_and_floats_never_fail() -> Result<()> {
        let a: ArrayRef = Arc::new(Int32Array::from(vec![i32::MIN, 1]));
        let b: ArrayRef = Arc::new(Int32Array::from(vec![-1, 0]));
        assert_eq!(call(Op::Div, a, b)?.null_count(), 2);
        let a: ArrayRef = Arc::new(Float64Array::from(vec![1.0, 0.0]));
        let b: ArrayRef = Arc::new(Float64Array::from(vec![0.0, 0.0]));
        let out = call(Op::Div, a, b)?;
        let out = out.as_primitive::<Float64Type>();
        assert!(out.value(0).is_infinite() && out.value(1).is_nan());
        Ok(())
    }
}
