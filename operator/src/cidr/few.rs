//! [`Few`]: a list that keeps up to two items inline. A Node has one pod CIDR per family, so
//! its list almost never needs the heap; at tens of thousands of Nodes that is one allocation
//! (and one cache miss) less per Node.

use std::fmt;
use std::ops::Deref;

/// Up to two items inline, more on the heap. Derefs to a slice.
#[derive(Clone)]
pub enum Few<T> {
    /// `len` (1 or 2) items; with one item the second slot repeats the first.
    Inline(u8, [T; 2]),
    /// None, or more than two.
    Heap(Vec<T>),
}

impl<T> Default for Few<T> {
    fn default() -> Self {
        Few::Heap(Vec::new())
    }
}

impl<T> Deref for Few<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            Few::Inline(len, items) => &items[..usize::from(*len)],
            Few::Heap(v) => v,
        }
    }
}

impl<'a, T> IntoIterator for &'a Few<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<T: Clone> FromIterator<T> for Few<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let mut it = iter.into_iter();
        let Some(a) = it.next() else {
            return Few::Heap(Vec::new());
        };
        let Some(b) = it.next() else {
            return Few::Inline(1, [a.clone(), a]);
        };
        match it.next() {
            None => Few::Inline(2, [a, b]),
            Some(c) => {
                let mut v = vec![a, b, c];
                v.extend(it);
                Few::Heap(v)
            }
        }
    }
}

impl<T: PartialEq> PartialEq for Few<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<T: Eq> Eq for Few<T> {}

impl<T: fmt::Debug> fmt::Debug for Few<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<T: PartialEq> PartialEq<Vec<T>> for Few<T> {
    fn eq(&self, other: &Vec<T>) -> bool {
        **self == **other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_any_count_as_a_slice() {
        for n in 0..5 {
            let few: Few<u32> = (0..n).collect();
            assert_eq!(few.len(), n as usize);
            assert_eq!(&*few, &(0..n).collect::<Vec<_>>()[..]);
            assert_eq!(matches!(few, Few::Inline(..)), (1..=2).contains(&n));
        }
        let one: Few<u32> = [7].into_iter().collect();
        assert_eq!(one, vec![7]);
        assert_eq!(format!("{one:?}"), "[7]");
    }
}
