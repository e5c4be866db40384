//! vffn-autograd
